// The `adamw` optimizer: Adam with decoupled weight decay (Loshchilov & Hutter), the same update
// as torch.optim.AdamW, with weight decay only on the decay group.
#include <linearnexus/error.h>
#include <linearnexus/optimizer.h>
#include <linearnexus/plugin.h>

#include "moment_slots.h"

namespace linearnexus {
namespace {

class AdamW : public Optimizer {
 public:
  AdamW(const std::vector<NamedParameter>& params, const Params& p)
      : Optimizer(p.get_float("lr")),
        slots_(params, p, "adamw", "exp_avg", "exp_avg_sq"),
        eps_(p.get_float("eps")),
        wd_(p.get_float("weight_decay")) {
    auto betas = p.get_float_list("betas");
    check_betas(betas, "optimizer.betas");
    b1_ = betas[0], b2_ = betas[1];
  }

  void step() override {
    ++t_;
    adamw_update_slots(slots_, t_, current_lr(), b1_, b2_, eps_, wd_);
  }

  TensorMap state_dict() const override {
    TensorMap out;
    out["step"] = at::full({}, t_, at::kLong);
    slots_.save(out);
    return out;
  }

  void load_state_dict(const TensorMap& st) override {
    std::set<std::string> keys{"step"};
    slots_.add_keys(keys);
    check_state_keys(st, keys, "adamw");
    const int64_t step = state_count(st, "step", "adamw");
    slots_.load(st);
    t_ = step;
  }

  std::string describe_groups() const override { return "adamw " + slots_.describe(wd_); }

 private:
  MomentSlots slots_;  // first: exp_avg, second: exp_avg_sq
  double b1_ = 0.9, b2_ = 0.95, eps_, wd_;
  int64_t t_ = 0;
};

void register_adamw(Registry& r) {
  Schema s = {
      {"lr", ParamType::Float, "3e-4", "peak learning rate", {}, 0},
      {"betas", ParamType::FloatList, "[0.9, 0.95]", "moment decay rates (beta1, beta2)"},
      {"eps", ParamType::Float, "1e-8", "denominator epsilon", {}, 0},
  };
  for (auto& k : MomentSlots::schema_keys("0.1")) s.push_back(k);
  r.add_optimizer(
      "adamw", "Adam with decoupled weight decay (as torch.optim.AdamW)", s,
      [](const std::vector<NamedParameter>& ps, const Params& p) { return std::make_shared<AdamW>(ps, p); });
}

}  // namespace
}  // namespace linearnexus

LINEARNEXUS_PLUGIN("adamw", "1.0.0", "AdamW optimizer", linearnexus::register_adamw)
