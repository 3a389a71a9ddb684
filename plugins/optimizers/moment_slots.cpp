// The moment slots and the AdamW update the optimizers of this folder share (moment_slots.h).
#include "moment_slots.h"

#include <torch/torch.h>

#include <cmath>
#include <optional>
#include <sstream>

#include <linearnexus/compat.h>
#include <linearnexus/error.h>

namespace linearnexus {

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

}  // namespace linearnexus
