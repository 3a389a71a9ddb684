// The `adamw` optimizer: Adam with decoupled weight decay (Loshchilov & Hutter), the same update
// as torch.optim.AdamW, with weight decay only on the decay group.
#include <linearnexus/error.h>
#include <linearnexus/optimizer.h>
#include <linearnexus/plugin.h>

#include <cmath>
#include <sstream>

namespace linearnexus {
namespace {

class AdamW : public Optimizer {
 public:
  AdamW(const std::vector<NamedParameter>& params, const Params& p)
      : lr_(p.get_float("lr")), eps_(p.get_float("eps")), wd_(p.get_float("weight_decay")) {
    auto betas = p.get_float_list("betas");
    if (betas.size() != 2) throw Error("optimizer.betas must be two numbers, e.g. [0.9, 0.95]");
    b1_ = betas[0], b2_ = betas[1];
    const auto& force_decay = p.get_string_list("decay");
    const auto& force_no_decay = p.get_string_list("no_decay");
    auto matches = [](const std::vector<std::string>& pats, const std::string& n) {
      for (const auto& pat : pats)
        if (glob_match(pat, n)) return true;
      return false;
    };
    for (const auto& np : params) {
      bool decay = !default_no_decay(np);
      if (matches(force_decay, np.name)) decay = true;
      if (matches(force_no_decay, np.name)) decay = false;
      slots_.push_back({np, decay, at::zeros_like(np.param), at::zeros_like(np.param)});
    }
    lr_now_ = lr_;
  }

  void step() override {
    torch::NoGradGuard g;
    ++t_;
    const double bc1 = 1.0 - std::pow(b1_, static_cast<double>(t_));
    const double bc2_sqrt = std::sqrt(1.0 - std::pow(b2_, static_cast<double>(t_)));
    for (auto& s : slots_) {
      auto& p = s.np.param;
      if (!p.grad().defined()) continue;
      auto g = p.grad();
      if (s.decay && wd_ != 0) p.mul_(1.0 - lr_now_ * wd_);
      s.m.mul_(b1_).add_(g, 1.0 - b1_);
      s.v.mul_(b2_).addcmul_(g, g, 1.0 - b2_);
      auto denom = (s.v.sqrt() / bc2_sqrt).add_(eps_);
      p.addcdiv_(s.m, denom, -lr_now_ / bc1);
    }
  }

  void set_lr_multiplier(double m) override { lr_now_ = lr_ * m; }
  double base_lr() const override { return lr_; }
  double current_lr() const override { return lr_now_; }

  TensorMap state_dict() const override {
    TensorMap out;
    out["step"] = at::full({}, t_, at::kLong);
    for (const auto& s : slots_) {
      out[s.np.name + ".exp_avg"] = s.m;
      out[s.np.name + ".exp_avg_sq"] = s.v;
    }
    return out;
  }

  void load_state_dict(const TensorMap& st) override {
    auto get = [&](const std::string& k) -> const at::Tensor& {
      auto it = st.find(k);
      if (it == st.end()) throw Error("checkpoint has no adamw state '" + k + "' (saved by another optimizer?)");
      return it->second;
    };
    torch::NoGradGuard g;
    t_ = get("step").item<int64_t>();
    for (auto& s : slots_) {
      s.m.copy_(get(s.np.name + ".exp_avg"));
      s.v.copy_(get(s.np.name + ".exp_avg_sq"));
    }
  }

  std::string describe_groups() const override {
    int64_t n[2] = {0, 0}, t[2] = {0, 0};
    for (const auto& s : slots_) n[s.decay] += s.np.param.numel(), t[s.decay] += 1;
    std::ostringstream o;
    o << "adamw decay group: " << t[1] << " tensors, " << n[1] << " parameters (weight_decay " << wd_ << "); "
      << "no-decay group: " << t[0] << " tensors, " << n[0] << " parameters";
    return o.str();
  }

 private:
  struct Slot {
    NamedParameter np;
    bool decay;
    at::Tensor m, v;
  };
  std::vector<Slot> slots_;
  double lr_, lr_now_, b1_ = 0.9, b2_ = 0.95, eps_, wd_;
  int64_t t_ = 0;
};

void register_adamw(Registry& r) {
  r.add_optimizer("adamw", "Adam with decoupled weight decay (as torch.optim.AdamW)",
                  {
                      {"lr", ParamType::Float, "3e-4", "peak learning rate"},
                      {"betas", ParamType::FloatList, "[0.9, 0.95]", "moment decay rates (beta1, beta2)"},
                      {"eps", ParamType::Float, "1e-8", "denominator epsilon"},
                      {"weight_decay", ParamType::Float, "0.1", "decoupled weight decay on the decay group"},
                      {"no_decay", ParamType::StringList, "[]", "extra parameter-name globs without weight decay"},
                      {"decay", ParamType::StringList, "[]", "parameter-name globs forced into the decay group (default: 2-D weights except embeddings and norms)"},
                  },
                  [](const std::vector<NamedParameter>& ps, const Params& p) { return std::make_shared<AdamW>(ps, p); });
}

}  // namespace
}  // namespace linearnexus

LINEARNEXUS_PLUGIN("adamw", "1.0.0", "AdamW optimizer", linearnexus::register_adamw)
