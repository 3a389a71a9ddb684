#pragma once
// What the optimizers of this folder share (compiled into each of adamw, sophia and muon; not SDK):
// per-parameter moment slots grouped by weight decay, and the AdamW update.
#include <ATen/ATen.h>

#include <set>
#include <string>
#include <vector>

#include <linearnexus/optimizer.h>
#include <linearnexus/params.h>
#include <linearnexus/tensor_map.h>

namespace linearnexus {

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
  MomentSlots(const std::vector<NamedParameter>& params, const Params& p, std::string optimizer, std::string first_key,
              std::string second_key);
  // Groups by explicit globs (an optimizer whose keys are named otherwise, e.g. Muon's inner AdamW).
  MomentSlots(const std::vector<NamedParameter>& params, const std::vector<std::string>& decay,
              const std::vector<std::string>& no_decay, std::string optimizer, std::string first_key,
              std::string second_key);
  // The keys it reads (weight_decay, no_decay, decay), for the optimizer's schema to end with.
  static Schema schema_keys(const std::string& default_weight_decay);
  std::vector<Slot>& all() { return slots_; }
  const std::vector<Slot>& all() const { return slots_; }
  void save(TensorMap& out) const;
  // Each slot's two entries, checked first (check_state_tensor; the second moments must also be
  // non-negative: squares, or a Gauss-Newton estimate of them): an Error names the entry.
  void load(const TensorMap& state);
  // The state_dict keys the slots save ("<name>.<first>", "<name>.<second>").
  void add_keys(std::set<std::string>& keys) const;
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

// What every optimizer of this folder checks in load_state_dict, before it changes anything, so that
// an edited or corrupt checkpoint is refused naming the entry (not resumed into a "divergence"):
// the state holds exactly the keys `expected` (none missing, none unknown).
void check_state_keys(const TensorMap& state, const std::set<std::string>& expected, const std::string& optimizer);
// state[key] as a count (the step, Sophia's curvature updates): one whole number >= 0.
int64_t state_count(const TensorMap& state, const std::string& key, const std::string& optimizer);
// state[key] is a finite floating-point tensor shaped like `like` (and >= 0 when non_negative).
const at::Tensor& state_tensor(const TensorMap& state, const std::string& key, const at::Tensor& like,
                               bool non_negative, const std::string& optimizer);
// optimizer.betas: two numbers in [0, 1) (1 would divide the bias correction by zero).
void check_betas(const std::vector<double>& betas, const std::string& key);

}  // namespace linearnexus
