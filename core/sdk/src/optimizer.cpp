// What optimizers share (optimizer.h): the lr bookkeeping and parameter grouping by role.
#include "linearnexus/optimizer.h"

namespace linearnexus {

void Optimizer::zero_grad(const std::vector<NamedParameter>& params) const {
  for (const auto& p : params)
    if (p.param.grad().defined()) p.param.mutable_grad().reset();
}

size_t Optimizer::add_lr_group(double base_lr) {
  lr_base_.push_back(base_lr);
  lr_now_.push_back(base_lr);
  return lr_base_.size() - 1;
}

void Optimizer::set_lr_multiplier(double multiplier) {
  for (size_t g = 0; g < lr_base_.size(); ++g) lr_now_[g] = lr_base_[g] * multiplier;
}

bool glob_match(const std::string& pat, const std::string& s) {
  size_t p = 0, t = 0, star = std::string::npos, mark = 0;
  while (t < s.size()) {
    if (p < pat.size() && (pat[p] == '?' || pat[p] == s[t])) {
      ++p, ++t;
    } else if (p < pat.size() && pat[p] == '*') {
      star = p++, mark = t;
    } else if (star != std::string::npos) {
      p = star + 1, t = ++mark;
    } else {
      return false;
    }
  }
  while (p < pat.size() && pat[p] == '*') ++p;
  return p == pat.size();
}

bool glob_match_any(const std::vector<std::string>& patterns, const std::string& text) {
  for (const auto& pat : patterns)
    if (glob_match(pat, text)) return true;
  return false;
}

bool in_decay_group(const NamedParameter& p, const std::vector<std::string>& decay,
                    const std::vector<std::string>& no_decay) {
  bool d = role_decays(role_of(p), p.param);
  if (glob_match_any(decay, p.name)) d = true;
  if (glob_match_any(no_decay, p.name)) d = false;
  return d;
}

}  // namespace linearnexus
