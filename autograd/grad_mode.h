// Grad mode: a thread-local switch. Under NoGradGuard, ops build no graph (inference, EMA,
// optimiser updates, evaluation).
#pragma once

namespace psvae::ag {

bool grad_enabled();
void set_grad_enabled(bool on);

class NoGradGuard {
 public:
  NoGradGuard() : prev_(grad_enabled()) { set_grad_enabled(false); }
  ~NoGradGuard() { set_grad_enabled(prev_); }
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool prev_;
};

}  // namespace psvae::ag
