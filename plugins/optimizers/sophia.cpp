// The `sophia` optimizer: Sophia-G (Liu et al., 2023, "Sophia: A Scalable Stochastic Second-order
// Optimizer for Language Model Pre-training"), a diagonal-Hessian-preconditioned momentum method
// whose per-coordinate step is clipped, so it can never exceed lr.
//
//   m  <- beta1 m + (1 - beta1) g                          every step
//   h  <- beta2 h + (1 - beta2) h_hat                      every k steps (the curvature pass)
//   p  <- p (1 - lr wd)                                    decoupled decay, decay group only
//   p  <- p - lr * clip(m / max(rho h, eps), 1)            clip(z, 1) = max(-1, min(z, 1))
//
// h_hat is the Gauss-Newton-Bartlett estimate: draw labels from the model's own output
// distribution, take the gradient g_hat of that cross-entropy (mean over the N predictions), and
// h_hat = N * g_hat * g_hat. (E over sampled labels of N g_hat^2 is the Gauss-Newton diagonal of
// the mean loss, always >= 0, so unlike the true Hessian it never flips the step's direction.)
// The trainer runs that pass because wants_curvature_estimate says so (see Optimizer); it averages
// over every token it sampled, so N = batch tokens, which the trainer passes to update_curvature.
//
// Why the clip: where the curvature estimate is tiny, stale or noisy, m / (rho h) could be huge;
// clipping bounds the step by lr (then Sophia degrades to sign momentum there), which is what lets
// it use a Hessian refreshed only every k steps. No bias correction, as in the paper.
#include <linearnexus/error.h>
#include <linearnexus/optimizer.h>
#include <linearnexus/plugin.h>

#include "moment_slots.h"

#include <sstream>

namespace linearnexus {
namespace {

class Sophia : public Optimizer {
 public:
  Sophia(const std::vector<NamedParameter>& params, const Params& p)
      : Optimizer(p.get_float("lr")),
        slots_(params, p, "sophia", "exp_avg", "hessian"),
        rho_(p.get_float("rho")),
        eps_(p.get_float("eps")),
        wd_(p.get_float("weight_decay")),
        k_(p.get_int("k")) {
    auto betas = p.get_float_list("betas");
    check_betas(betas, "optimizer.betas");
    if (k_ < 1) throw Error("optimizer.k must be >= 1 (steps between curvature estimates)");
    if (rho_ <= 0) throw Error("optimizer.rho must be positive");
    b1_ = betas[0], b2_ = betas[1];
  }

  void step() override {
    torch::NoGradGuard g;
    ++t_;
    for (auto& s : slots_.all()) {
      auto p = s.np.param;
      auto &m = s.first, &h = s.second;
      if (!p.grad().defined()) continue;
      if (s.decay && wd_ != 0) p.mul_(1.0 - current_lr() * wd_);
      m.mul_(b1_).add_(p.grad(), 1.0 - b1_);
      auto ratio = (m / (h * rho_).clamp_min_(eps_)).clamp_(-1.0, 1.0);
      p.add_(ratio, -current_lr());
    }
  }

  // Step 0 gets an estimate, then every k steps: the run asks with its 0-based step number, so a
  // resumed run asks at the same steps as an uninterrupted one.
  bool wants_curvature_estimate(int64_t step) const override { return step % k_ == 0; }

  void update_curvature(int64_t batch_tokens) override {
    torch::NoGradGuard g;
    const double n = static_cast<double>(batch_tokens);
    for (auto& s : slots_.all()) {
      const auto& grad = s.np.param.grad();
      if (!grad.defined()) continue;
      s.second.mul_(b2_).addcmul_(grad, grad, (1.0 - b2_) * n);  // h_hat = N * g_hat^2
    }
    ++estimates_;
  }

  TensorMap state_dict() const override {
    TensorMap out;
    out["step"] = at::full({}, t_, at::kLong);
    out["curvature_updates"] = at::full({}, estimates_, at::kLong);
    slots_.save(out);
    return out;
  }

  void load_state_dict(const TensorMap& st) override {
    std::set<std::string> keys{"step", "curvature_updates"};
    slots_.add_keys(keys);
    check_state_keys(st, keys, "sophia");
    const int64_t step = state_count(st, "step", "sophia"), estimates = state_count(st, "curvature_updates", "sophia");
    slots_.load(st);  // the Hessian EMA is an estimate of squares: non-negative
    t_ = step, estimates_ = estimates;
  }

  std::string describe_groups() const override {
    std::ostringstream o;
    o << "sophia (rho " << rho_ << ", k " << k_ << ", betas [" << b1_ << ", " << b2_ << "]) " << slots_.describe(wd_);
    return o.str();
  }

 private:
  MomentSlots slots_;  // first: the gradient EMA m, second: the diagonal Hessian EMA h
  double rho_, eps_, wd_, b1_ = 0.965, b2_ = 0.99;
  int64_t k_, t_ = 0, estimates_ = 0;
};

void register_sophia(Registry& r) {
  Schema s = {
      {"lr", ParamType::Float, "3e-4", "peak learning rate (also the largest step any coordinate takes)", {}, 0},
      {"betas", ParamType::FloatList, "[0.965, 0.99]", "decay rates of the gradient EMA and of the Hessian EMA"},
      {"rho", ParamType::Float, "0.04", "clipping scale: step = lr * clip(m / max(rho*h, eps), 1)"},
      {"k", ParamType::Int, "10", "steps between Hessian estimates (at steps 0, k, 2k, ...)"},
      {"eps", ParamType::Float, "1e-12", "floor of the denominator rho*h", {}, 0},
  };
  for (auto& k : MomentSlots::schema_keys("0.1")) s.push_back(k);
  r.add_optimizer(
      "sophia",
      "Sophia-G: clipped diagonal-Hessian-preconditioned momentum; the Hessian EMA comes from a "
      "Gauss-Newton-Bartlett pass the trainer runs every k steps (labels sampled from the model)",
      s, [](const std::vector<NamedParameter>& ps, const Params& p) { return std::make_shared<Sophia>(ps, p); });
}

}  // namespace
}  // namespace linearnexus

LINEARNEXUS_PLUGIN("sophia", "1.0.0", "Sophia-G optimizer (clipped diagonal-Hessian preconditioning)",
                   linearnexus::register_sophia)
