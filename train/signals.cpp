#include "train/signals.h"

#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstring>

namespace psvae::train {

namespace {

// Both are touched from the handler, so they must be lock-free atomics (a mutex-backed atomic
// could deadlock when the signal lands while the main thread holds its lock).
std::atomic<int> g_stop{0};
static_assert(std::atomic<int>::is_always_lock_free, "the stop flag must be lock-free");

bool g_installed = false;  // only touched from normal code
struct sigaction g_old_int, g_old_term;

extern "C" void on_stop_signal(int) {
  if (g_stop.exchange(1) == 0) {
    static const char msg[] =
        "\nstop requested: finishing the current step and writing a checkpoint\n";
    // The result is ignored on purpose: nothing useful can be done about a failed write here.
    ssize_t ignored = ::write(STDERR_FILENO, msg, sizeof(msg) - 1);
    (void)ignored;
  }
}

}  // namespace

bool stop_requested() { return g_stop.load() != 0; }

void reset_stop_request() { g_stop.store(0); }

void install_stop_handlers() {
  if (g_installed) return;
  struct sigaction sa;
  std::memset(&sa, 0, sizeof(sa));
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  // SA_RESTART: a read in a loader thread interrupted by the signal resumes instead of failing.
  sa.sa_flags = SA_RESTART;
  sigaction(SIGINT, &sa, &g_old_int);
  sigaction(SIGTERM, &sa, &g_old_term);
  g_installed = true;
}

void restore_stop_handlers() {
  if (!g_installed) return;
  sigaction(SIGINT, &g_old_int, nullptr);
  sigaction(SIGTERM, &g_old_term, nullptr);
  g_installed = false;
}

StopHandlerScope::StopHandlerScope() {
  installed_here_ = !g_installed;
  install_stop_handlers();
}

StopHandlerScope::~StopHandlerScope() {
  if (installed_here_) restore_stop_handlers();
}

}  // namespace psvae::train
