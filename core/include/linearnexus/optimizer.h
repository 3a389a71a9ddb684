#pragma once
// The optimizer protocol and what optimizers share: parameter grouping by role (globs override),
// the lr bookkeeping and schedule, moment slots, the AdamW update.
#include <ATen/ATen.h>

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "linearnexus/param_role.h"
#include "linearnexus/params.h"
#include "linearnexus/tensor_map.h"

namespace linearnexus {

struct NamedParameter {
  std::string name;  // e.g. "blocks.0.attn.qkv.weight"
  at::Tensor param;
  // Fused sub-matrix row counts when the block declared them (see Block::fused_splits).
  std::vector<int64_t> split_rows;
  // What the tensor is (Block::parameter_roles, LMModel::parameter_roles); unset: default_role.
  std::optional<ParamRole> role;
};

// p.role, or default_role(p.param) when nobody declared one.
ParamRole role_of(const NamedParameter& p);

class Optimizer {
 public:
  virtual ~Optimizer() = default;
  // Apply one update from the parameters' .grad (which the trainer has accumulated and clipped).
  virtual void step() = 0;
  // Schedule: every lr group's lr = its base lr * multiplier.
  void set_lr_multiplier(double multiplier);
  // An lr group's base and current learning rate; group 0, the main one, is what the schedule's
  // min_lr and the logs use.
  double base_lr(size_t group = 0) const { return lr_base_.at(group); }
  double current_lr(size_t group = 0) const { return lr_now_.at(group); }
  // Everything needed to continue exactly (moments, step counts), keyed by parameter name.
  virtual TensorMap state_dict() const = 0;
  virtual void load_state_dict(const TensorMap& state) = 0;
  // One line per parameter group: how many tensors and parameters it holds.
  virtual std::string describe_groups() const { return ""; }

  // Capability: an extra curvature-estimate pass. When it returns true for `step`, the trainer
  // runs one more forward/backward on a loss the optimizer defines (for Sophia: cross-entropy
  // against labels sampled from the model's own output) and then calls update_curvature with the
  // resulting .grad in place.
  virtual bool wants_curvature_estimate(int64_t step) const { return false; }
  virtual void update_curvature(int64_t batch_tokens) {}

  void zero_grad(const std::vector<NamedParameter>& params) const;

 protected:
  // The learning rates the schedule scales, kept here once for every optimizer: group 0 (the main
  // one) from the constructor, more with add_lr_group (returns its index); steps read current_lr.
  explicit Optimizer(double main_lr) { add_lr_group(main_lr); }
  size_t add_lr_group(double base_lr);

 private:
  std::vector<double> lr_base_, lr_now_;
};

// Glob match with '*' (any run) and '?' (one char): parameter-name patterns in YAML.
bool glob_match(const std::string& pattern, const std::string& text);
bool glob_match_any(const std::vector<std::string>& patterns, const std::string& text);
// The weight-decay grouping all optimizers share: by role (role_decays: matrices, heads, convs, not
// embeddings, norms, biases, SSM dynamics), then names matching a glob in `decay` are forced in and
// names matching one in `no_decay` forced out (no_decay wins).
bool in_decay_group(const NamedParameter& p, const std::vector<std::string>& decay,
                    const std::vector<std::string>& no_decay);

// The per-parameter state of an optimizer that splits parameters into a weight-decay and a
// no-decay group (by the `decay` / `no_decay` keys, see in_decay_group) and keeps two moment
// tensors per parameter (AdamW: exp_avg, exp_avg_sq; Sophia: exp_avg, hessian). Saved and restored
// as "<parameter name>.<key>" entries of the optimizer's state_dict.
class MomentSlots {
 public:
  struct Slot {
    NamedParameter np;
    bool decay;
    at::Tensor first, second;  // zero-initialised, like the parameter
  };
  // Groups by the `decay` / `no_decay` keys of p.
  MomentSlots(const std::vector<NamedParameter>& params, const Params& p, std::string optimizer,
              std::string first_key, std::string second_key);
  // Groups by explicit globs (an optimizer whose keys are named otherwise, e.g. Muon's inner AdamW).
  MomentSlots(const std::vector<NamedParameter>& params, const std::vector<std::string>& decay,
              const std::vector<std::string>& no_decay, std::string optimizer, std::string first_key,
              std::string second_key);
  // The keys it reads (weight_decay, no_decay, decay), for the optimizer's schema to end with.
  static Schema schema_keys(const std::string& default_weight_decay);
  std::vector<Slot>& all() { return slots_; }
  const std::vector<Slot>& all() const { return slots_; }
  void save(TensorMap& out) const;
  void load(const TensorMap& state);  // an Error naming the missing entry when one is absent
  // "decay group: T tensors, N parameters (weight_decay wd); no-decay group: T tensors, N parameters"
  std::string describe(double weight_decay) const;

 private:
  std::vector<Slot> slots_;
  std::string optimizer_, first_key_, second_key_;
};

// One AdamW update in place (torch.optim.AdamW's arithmetic), shared by every optimizer that runs
// AdamW on some of its tensors: decoupled decay p *= 1 - lr*wd, moments updated, bias-corrected
// step. `step` is 1-based (the count including this update).
void adamw_update(const at::Tensor& param, const at::Tensor& grad, const at::Tensor& exp_avg,
                  const at::Tensor& exp_avg_sq, int64_t step, double lr, double beta1, double beta2, double eps,
                  double weight_decay);

// adamw_update on every slot that has a gradient, weight_decay on the decay group only. On CUDA
// (LibTorch 2.1+) two multi-tensor launches (at::_fused_adamw_, per group) instead of ~10 small
// kernels per tensor; elsewhere adamw_update per tensor.
void adamw_update_slots(const MomentSlots& slots, int64_t step, double lr, double beta1, double beta2, double eps,
                        double weight_decay);

// state[key], or an Error saying the checkpoint lacks `optimizer`'s state `key` (another optimizer's?).
const at::Tensor& optimizer_state_at(const TensorMap& state, const std::string& key, const std::string& optimizer);

// Learning-rate multiplier for `step` (0-based): linear warmup over warmup_steps, then decay
// ("cosine", "linear", "constant") to min_ratio at max_steps.
double lr_multiplier(int64_t step, int64_t warmup_steps, int64_t max_steps, const std::string& decay,
                     double min_ratio);

// Global L2 norm of all gradients (a 0-d tensor: reading it is the caller's choice, so the step
// need not synchronise with the device); scales them to max_norm when above it (<= 0: no clip).
at::Tensor clip_grad_norm(const std::vector<NamedParameter>& params, double max_norm);

}  // namespace linearnexus
