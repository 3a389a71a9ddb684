// What optimizers share: parameter grouping by role, the lr bookkeeping, the AdamW update,
// per-parameter moment slots, the lr schedule and gradient clipping.
#include "linearnexus/optimizer.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <sstream>

#include "linearnexus/compat.h"
#include "linearnexus/error.h"

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

ParamRole role_of(const NamedParameter& p) { return p.role ? *p.role : default_role(p.param); }

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

void adamw_update(const at::Tensor& param, const at::Tensor& grad, const at::Tensor& m, const at::Tensor& v,
                  int64_t step, double lr, double b1, double b2, double eps, double wd) {
  torch::NoGradGuard g;
  const double bc1 = 1.0 - std::pow(b1, static_cast<double>(step));
  const double bc2_sqrt = std::sqrt(1.0 - std::pow(b2, static_cast<double>(step)));
  auto p = param;  // a handle: the updates below are in place
  if (wd != 0) p.mul_(1.0 - lr * wd);
  m.mul_(b1).add_(grad, 1.0 - b1);
  v.mul_(b2).addcmul_(grad, grad, 1.0 - b2);
  auto denom = (v.sqrt() / bc2_sqrt).add_(eps);
  p.addcdiv_(m, denom, -lr / bc1);
}

void adamw_update_slots(const MomentSlots& slots, int64_t step, double lr, double b1, double b2, double eps,
                        double wd) {
  torch::NoGradGuard g;
#if LINEARNEXUS_HAS_MULTI_TENSOR_OPS
  // The fused kernel takes fp32 tensors of one CUDA device; anything else goes per tensor below.
  std::vector<at::Tensor> p[2], gr[2], m[2], v[2];  // [0]: no-decay group, [1]: decay group
  std::optional<at::Device> device;
  for (const auto& s : slots.all()) {
    const auto& param = s.np.param;
    if (!param.grad().defined()) continue;
    if (param.is_cuda() && !device) device = param.device();
    if (param.is_cuda() && param.device() == *device && param.scalar_type() == at::kFloat &&
        param.grad().scalar_type() == at::kFloat) {
      p[s.decay].push_back(param), gr[s.decay].push_back(param.grad()), m[s.decay].push_back(s.first),
          v[s.decay].push_back(s.second);
    } else {
      adamw_update(param, param.grad(), s.first, s.second, step, lr, b1, b2, eps, s.decay ? wd : 0.0);
    }
  }
  for (int decay = 0; decay < 2; ++decay) {
    if (p[decay].empty()) continue;
    // The kernel reads the (1-based) step from a float tensor per parameter; one shared tensor,
    // filled from the host value, keeps the step count where it always was (the optimizer's state).
    auto step_t = at::full({}, static_cast<double>(step), p[decay].front().options());
    std::vector<at::Tensor> steps(p[decay].size(), step_t);
    at::_fused_adamw_(p[decay], gr[decay], m[decay], v[decay], {}, steps, lr, b1, b2, decay ? wd : 0.0, eps,
                      /*amsgrad=*/false, /*maximize=*/false);
  }
#else
  for (const auto& s : slots.all())
    if (s.np.param.grad().defined())
      adamw_update(s.np.param, s.np.param.grad(), s.first, s.second, step, lr, b1, b2, eps, s.decay ? wd : 0.0);
#endif
}

const at::Tensor& optimizer_state_at(const TensorMap& state, const std::string& key, const std::string& optimizer) {
  auto it = state.find(key);
  if (it == state.end())
    throw Error("checkpoint has no " + optimizer + " state '" + key + "' (saved by another optimizer?)");
  return it->second;
}

MomentSlots::MomentSlots(const std::vector<NamedParameter>& params, const Params& p, std::string optimizer,
                         std::string first_key, std::string second_key)
    : MomentSlots(params, p.get_string_list("decay"), p.get_string_list("no_decay"), std::move(optimizer),
                  std::move(first_key), std::move(second_key)) {}

MomentSlots::MomentSlots(const std::vector<NamedParameter>& params, const std::vector<std::string>& decay,
                         const std::vector<std::string>& no_decay, std::string optimizer, std::string first_key,
                         std::string second_key)
    : optimizer_(std::move(optimizer)), first_key_(std::move(first_key)), second_key_(std::move(second_key)) {
  for (const auto& np : params)
    slots_.push_back({np, in_decay_group(np, decay, no_decay), at::zeros_like(np.param), at::zeros_like(np.param)});
}

void MomentSlots::save(TensorMap& out) const {
  for (const auto& s : slots_) {
    out[s.np.name + "." + first_key_] = s.first;
    out[s.np.name + "." + second_key_] = s.second;
  }
}

void MomentSlots::load(const TensorMap& st) {
  torch::NoGradGuard g;
  for (auto& s : slots_) {
    s.first.copy_(optimizer_state_at(st, s.np.name + "." + first_key_, optimizer_));
    s.second.copy_(optimizer_state_at(st, s.np.name + "." + second_key_, optimizer_));
  }
}

Schema MomentSlots::schema_keys(const std::string& default_weight_decay) {
  return {{"weight_decay", ParamType::Float, default_weight_decay, "decoupled weight decay on the decay group"},
          {"no_decay", ParamType::StringList, "[]", "extra parameter-name globs without weight decay"},
          {"decay", ParamType::StringList, "[]",
           "parameter-name globs forced into the decay group (default by role: >= 2-D matrix, head, conv and "
           "other tensors; never embeddings, norms, biases or SSM dynamics)"}};
}

std::string MomentSlots::describe(double weight_decay) const {
  int64_t n[2] = {0, 0}, t[2] = {0, 0};
  for (const auto& s : slots_) n[s.decay] += s.np.param.numel(), t[s.decay] += 1;
  std::ostringstream o;
  o << "decay group: " << t[1] << " tensors, " << n[1] << " parameters (weight_decay " << weight_decay
    << "); no-decay group: " << t[0] << " tensors, " << n[0] << " parameters";
  return o.str();
}

double lr_multiplier(int64_t step, int64_t warmup, int64_t max_steps, const std::string& decay, double min_ratio) {
  if (warmup > 0 && step < warmup) return static_cast<double>(step + 1) / static_cast<double>(warmup);
  if (decay == "constant" || max_steps <= warmup) return 1.0;
  double progress = static_cast<double>(step - warmup) / static_cast<double>(max_steps - warmup);
  progress = std::min(1.0, std::max(0.0, progress));
  double shape = decay == "linear" ? 1.0 - progress : 0.5 * (1.0 + std::cos(M_PI * progress));
  return min_ratio + (1.0 - min_ratio) * shape;
}

at::Tensor clip_grad_norm(const std::vector<NamedParameter>& params, double max_norm) {
  std::vector<at::Tensor> grads;
  for (const auto& p : params)
    if (p.param.grad().defined()) grads.push_back(p.param.grad());
  if (grads.empty()) return at::zeros({});
#if LINEARNEXUS_HAS_MULTI_TENSOR_OPS
  // On CUDA, fp32 gradients: multi-tensor launches (one norm pass, one scaling pass) instead of a
  // norm and a multiply kernel per tensor, as torch.nn.utils.clip_grad_norm_(foreach=True).
  const bool multi = std::all_of(grads.begin(), grads.end(), [&](const at::Tensor& t) {
    return t.is_cuda() && t.scalar_type() == at::kFloat && t.device() == grads.front().device();
  });
  if (multi) {
    auto total = at::stack(at::_foreach_norm(grads, 2)).norm();
    if (max_norm > 0) at::_foreach_mul_(grads, (max_norm / (total + 1e-6)).clamp_max(1.0));
    return total;
  }
#endif
  std::vector<at::Tensor> norms;
  for (const auto& g : grads) norms.push_back(g.detach().to(at::kFloat).norm().reshape({1}));
  auto total = at::cat(norms).norm();
  if (max_norm > 0) {
    // Multiply by min(1, max/total) always: no branch on the value, so no device sync.
    auto coef = (max_norm / (total + 1e-6)).clamp_max(1.0);
    for (auto& g : grads) g.mul_(coef.to(g.scalar_type()));
  }
  return total;
}

}  // namespace linearnexus
