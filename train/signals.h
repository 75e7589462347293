// SIGINT / SIGTERM: finish the current step, write a checkpoint, exit 0.
//
// The handlers only set a lock-free atomic flag (the one thing a signal handler may safely do);
// the trainer polls stop_requested() after each completed optimiser step. A second signal while
// the checkpoint is being written just sets the flag again: the save is atomic (temp file, fsync,
// rename), so nothing can be left half-written whatever happens.
#pragma once

namespace psvae::train {

// True once SIGINT or SIGTERM arrived after install_stop_handlers().
bool stop_requested();
// Installs the flag-setting handlers for SIGINT and SIGTERM (idempotent). The first signal
// prints one line to stderr (with write(2), which is async-signal-safe).
void install_stop_handlers();
// Puts back the handlers that were in place before the first install_stop_handlers().
void restore_stop_handlers();
// Clears the flag (tests, and a command that runs several trainings in one process).
void reset_stop_request();

// Installs the handlers for the lifetime of a scope and restores the previous ones after it,
// unless they were installed already when the scope began (a command that installed them keeps
// them).
class StopHandlerScope {
 public:
  StopHandlerScope();
  ~StopHandlerScope();
  StopHandlerScope(const StopHandlerScope&) = delete;
  StopHandlerScope& operator=(const StopHandlerScope&) = delete;

 private:
  bool installed_here_ = false;
};

}  // namespace psvae::train
