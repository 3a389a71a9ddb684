// `momentum_sgd`: SGD with heavy-ball momentum and decoupled weight decay, a second lr group for the
// no-decay parameters (to exercise the Optimizer base's lr bookkeeping): an out-of-tree optimizer
// written against the SDK's documented protocol (optimizer.h) and nothing else.
#include <linearnexus/error.h>
#include <linearnexus/optimizer.h>
#include <linearnexus/plugin.h>

namespace momentum_sgd {
using namespace linearnexus;

class MomentumSGD : public Optimizer {
 public:
  MomentumSGD(const std::vector<NamedParameter>& params, const Params& p)
      : Optimizer(p.get_float("lr")), momentum_(p.get_float("momentum")), wd_(p.get_float("weight_decay")) {
    // The no-decay parameters learn at no_decay_lr_scale x the lr; the schedule scales both groups.
    no_decay_group_ = add_lr_group(p.get_float("lr") * p.get_float("no_decay_lr_scale"));
    for (const auto& np : params) slots_.push_back({np, in_decay_group(np, {}, {}), at::zeros_like(np.param)});
  }

  void step() override {
    torch::NoGradGuard g;
    for (auto& s : slots_) {
      if (!s.np.param.grad().defined()) continue;
      const double lr = current_lr(s.decay ? 0 : no_decay_group_);
      auto p = s.np.param;
      if (s.decay && wd_ > 0) p.mul_(1.0 - lr * wd_);
      s.velocity.mul_(momentum_).add_(p.grad());
      p.add_(s.velocity, -lr);
    }
  }

  TensorMap state_dict() const override {
    TensorMap out;
    for (const auto& s : slots_) out[s.np.name + ".velocity"] = s.velocity;
    return out;
  }

  void load_state_dict(const TensorMap& state) override {
    torch::NoGradGuard g;
    for (auto& s : slots_) {
      auto it = state.find(s.np.name + ".velocity");
      if (it == state.end()) throw Error("momentum_sgd: the checkpoint has no velocity of " + s.np.name);
      s.velocity.copy_(it->second);
    }
  }

  std::string describe_groups() const override { return std::to_string(slots_.size()) + " tensors with momentum"; }

 private:
  struct Slot {
    NamedParameter np;
    bool decay;
    at::Tensor velocity;
  };
  std::vector<Slot> slots_;
  double momentum_, wd_;
  size_t no_decay_group_ = 0;
};

void register_momentum_sgd(Registry& r) {
  r.add_optimizer(
      "momentum_sgd", "SGD with heavy-ball momentum (an out-of-tree example)",
      {{"lr", ParamType::Float, "0.05", "learning rate", {}, 0},
       {"momentum", ParamType::Float, "0.9", "momentum", {}, 0, 1},
       {"weight_decay", ParamType::Float, "0.0", "decoupled weight decay on the decay group", {}, 0},
       {"no_decay_lr_scale", ParamType::Float, "1.0", "lr of the no-decay group, relative", {}, 0}},
      [](const std::vector<NamedParameter>& ps, const Params& p) { return std::make_shared<MomentumSGD>(ps, p); });
}

}  // namespace momentum_sgd

LINEARNEXUS_PLUGIN("momentum_sgd", "0.1.0", "SGD with momentum (out-of-tree optimizer example)",
                   momentum_sgd::register_momentum_sgd)
