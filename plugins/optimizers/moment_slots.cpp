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

void check_state_keys(const TensorMap& state, const std::set<std::string>& expected, const std::string& optimizer) {
  for (const auto& key : expected) optimizer_state_at(state, key, optimizer);
  for (const auto& [key, value] : state)
    if (!expected.count(key))
      throw Error(optimizer + " state '" + key + "' is not one " + optimizer + " keeps for this model (" +
                  std::to_string(expected.size()) +
                  " entries: step and one per parameter); the checkpoint was saved by " +
                  "another optimizer or model, or edited");
}

int64_t state_count(const TensorMap& state, const std::string& key, const std::string& optimizer) {
  const at::Tensor& t = optimizer_state_at(state, key, optimizer);
  if (t.numel() != 1 || at::isFloatingType(t.scalar_type()) || t.scalar_type() == at::kBool)
    throw Error(optimizer + " state '" + key + "' is not one whole number (" + c10::toString(t.scalar_type()) + " " +
                c10::str(t.sizes()) + "); the checkpoint is corrupt or edited");
  const int64_t n = t.item<int64_t>();
  if (n < 0)
    throw Error(optimizer + " state '" + key + "' is " + std::to_string(n) +
                ", not a count (>= 0); the checkpoint is " + "corrupt or edited: use another checkpoint of the run");
  return n;
}

const at::Tensor& state_tensor(const TensorMap& state, const std::string& key, const at::Tensor& like,
                               bool non_negative, const std::string& optimizer) {
  const at::Tensor& t = optimizer_state_at(state, key, optimizer);
  if (t.sizes() != like.sizes() || t.scalar_type() != like.scalar_type())
    throw Error(optimizer + " state '" + key + "' is " + c10::toString(t.scalar_type()) + " " + c10::str(t.sizes()) +
                ", but the parameter's is " + c10::toString(like.scalar_type()) + " " + c10::str(like.sizes()) +
                "; the checkpoint was saved for another model, or edited");
  if (!at::isfinite(t).all().item<bool>())
    throw Error(optimizer + " state '" + key + "' holds NaN or infinite values; the run it came from diverged or the " +
                "checkpoint is corrupt: use an earlier checkpoint");
  if (non_negative && (t < 0).any().item<bool>())
    throw Error(optimizer + " state '" + key +
                "' holds negative values, but it is a second moment (a mean of squares); " +
                "the checkpoint is corrupt or edited: use another checkpoint of the run");
  return t;
}

void check_betas(const std::vector<double>& betas, const std::string& key) {
  if (betas.size() != 2) throw Error(key + " must be two numbers, e.g. [0.9, 0.95]");
  for (double b : betas)
    if (!(b >= 0 && b < 1)) throw Error(key + " must be two numbers in [0, 1) (got " + std::to_string(b) + ")");
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
  // Every entry checked before any is copied: a refused state leaves the slots as they were.
  for (const auto& s : slots_) {
    state_tensor(st, s.np.name + "." + first_key_, s.first, false, optimizer_);
    state_tensor(st, s.np.name + "." + second_key_, s.second, true, optimizer_);
  }
  for (auto& s : slots_) {
    s.first.copy_(st.at(s.np.name + "." + first_key_));
    s.second.copy_(st.at(s.np.name + "." + second_key_));
  }
}

void MomentSlots::add_keys(std::set<std::string>& keys) const {
  for (const auto& s : slots_) {
    keys.insert(s.np.name + "." + first_key_);
    keys.insert(s.np.name + "." + second_key_);
  }
}

Schema MomentSlots::schema_keys(const std::string& default_weight_decay) {
  return {{"weight_decay", ParamType::Float, default_weight_decay, "decoupled weight decay on the decay group", {}, 0},
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
