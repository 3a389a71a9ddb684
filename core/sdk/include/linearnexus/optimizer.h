#pragma once
// The optimizer protocol and what optimizers share: the lr bookkeeping the schedule drives, and
// parameter grouping by role (param_role.h) with the experiment's globs on top.
#include <ATen/ATen.h>

#include <string>
#include <vector>

#include "linearnexus/param_role.h"
#include "linearnexus/params.h"
#include "linearnexus/tensor_map.h"

namespace linearnexus {

class Optimizer {
 public:
  virtual ~Optimizer() = default;
  // Apply one update from the parameters' .grad (which the run has averaged over ranks and clipped).
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

  // Capability: an extra curvature-estimate pass. When it returns true for `step`, the run's
  // optimizer_step (TrainingRun, trainer.h) runs one more forward/backward on a loss the run defines
  // for it (cross-entropy against labels sampled from the model's own output) and then calls
  // update_curvature with the resulting .grad in place, whichever trainer runs.
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

}  // namespace linearnexus
