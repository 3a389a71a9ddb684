// The `muon` optimizer (Keller Jordan et al., 2024): momentum whose update is orthogonalised by a
// quintic Newton-Schulz iteration, for the 2-D hidden weight matrices; everything else goes to an
// AdamW inside the same optimizer, with its own lr, betas and weight decay.
//
// Why two groups: orthogonalising replaces the update's singular values by ~1, which is the right
// geometry for a matrix acting as a linear map between hidden spaces, but not for an embedding or
// LM head (rows are independent lookups / classes), for vectors (norm gains, biases), or for an
// SSM's dynamics and conv kernels (element-wise parameters).
//
// Grouping rule (first match wins):
//   1. name matches a glob in `muon_params`  -> muon (the tensor must be 2-D)
//   2. name matches a glob in `adamw_params` -> adamw
//   3. default, by the role its block (or the model) declared (param_role.h): muon iff the tensor
//      is a 2-D `matrix`; every other role (embedding, head, norm, bias, ssm_dynamics, conv,
//      other) adamw. The inner AdamW weight-decays by role as the adamw optimizer does.
// Fused matrices (QKV, in_proj) are orthogonalised per logical sub-matrix when the block declared
// the split (Block::fused_splits -> NamedParameter::split_rows).
#include <linearnexus/error.h>
#include <linearnexus/optimizer.h>
#include <linearnexus/plugin.h>

#include "moment_slots.h"

#include <cmath>
#include <sstream>

namespace linearnexus {
namespace {

// Quintic Newton-Schulz: X <- a X + (b A + c A^2) X with A = X X^T. The coefficients make the
// scalar map x -> a x + b x^3 + c x^5 push every singular value in (0, 1] quickly towards ~1
// (into roughly [0.7, 1.2] after 5 steps) rather than converging exactly: speed over precision.
// Normalising by the Frobenius norm first puts every singular value in (0, 1]. A wide matrix keeps
// X X^T small (rows x rows), so tall ones are transposed. bf16 on CUDA (the iteration tolerates
// it and tensor cores make it cheap), fp32 on the CPU (bf16 matmuls are slow there).
at::Tensor newton_schulz(const at::Tensor& G, int64_t steps) {
  constexpr double a = 3.4445, b = -4.7750, c = 2.0315;
  const auto work = G.is_cuda() ? at::kBFloat16 : at::kFloat;
  auto X = G.to(at::kFloat);
  X = (X / (X.norm() + 1e-7)).to(work);
  const bool tall = G.size(0) > G.size(1);
  if (tall) X = X.t();
  for (int64_t i = 0; i < steps; ++i) {
    auto A = X.mm(X.t());
    auto B = at::addmm(A, A, A, b, c);  // b*A + c*A@A
    X = at::addmm(X, B, X, a, 1.0);     // a*X + B@X
  }
  if (tall) X = X.t();
  return X.to(G.scalar_type());
}

struct Groups {
  std::vector<NamedParameter> muon, adamw;
};

// The muon group and the inner AdamW's tensors: by role, then by the YAML globs (rule above).
Groups split_groups(const std::vector<NamedParameter>& params, const Params& p) {
  const auto& force_muon = p.get_string_list("muon_params");
  const auto& force_adamw = p.get_string_list("adamw_params");
  Groups g;
  for (const auto& np : params) {
    bool m = role_orthogonalised(role_of(np), np.param);
    if (glob_match_any(force_adamw, np.name)) m = false;
    if (glob_match_any(force_muon, np.name)) {
      if (np.param.dim() != 2)
        throw Error("optimizer.muon_params: '" + np.name + "' is " + std::to_string(np.param.dim()) +
                    "-D; Muon orthogonalises 2-D matrices only");
      m = true;
    }
    (m ? g.muon : g.adamw).push_back(np);
  }
  return g;
}

class Muon : public Optimizer {
 public:
  Muon(const std::vector<NamedParameter>& params, const Params& p) : Muon(split_groups(params, p), p) {}

  Muon(const Groups& groups, const Params& p)
      : Optimizer(p.get_float("lr")),
        // The inner AdamW decays what the adamw optimizer would by default (e.g. an untied head);
        // its state keeps the names it always had: "<name>.exp_avg" / "<name>.exp_avg_sq".
        adam_(groups.adamw, {}, {}, "muon", "exp_avg", "exp_avg_sq"),
        adam_group_(add_lr_group(p.get_float("adamw_lr"))),
        momentum_(p.get_float("momentum")),
        wd_(p.get_float("weight_decay")),
        nesterov_(p.get_bool("nesterov")),
        rms_scale_(p.get_string("scale") == "rms"),
        ns_steps_(p.get_int("ns_steps")),
        adam_eps_(p.get_float("adamw_eps")),
        adam_wd_(p.get_float("adamw_weight_decay")) {
    auto betas = p.get_float_list("adamw_betas");
    check_betas(betas, "optimizer.adamw_betas");
    b1_ = betas[0], b2_ = betas[1];
    for (const auto& np : groups.muon) {
      std::vector<int64_t> rows = np.split_rows;
      if (rows.empty()) rows = {np.param.size(0)};
      int64_t total = 0;
      for (auto r : rows) total += r;
      if (total != np.param.size(0))
        throw Error("muon: the declared split of '" + np.name + "' covers " + std::to_string(total) +
                    " rows, the matrix has " + std::to_string(np.param.size(0)));
      muon_.push_back({np, rows, at::zeros_like(np.param)});
    }
  }

  // Shape scale of the orthogonalised update of a rows x cols (sub-)matrix:
  //  "ratio": max(1, rows/cols)^0.5 (Jordan): a tall matrix's orthogonal update has unit singular
  //           values but smaller entries per output row; this keeps the per-row step comparable.
  //  "rms":   0.2 * sqrt(max(rows, cols)) (Moonshot): makes the update's RMS ~0.2, about AdamW's,
  //           so Muon can reuse AdamW's lr and weight decay.
  double shape_scale(int64_t rows, int64_t cols) const {
    if (rms_scale_) return 0.2 * std::sqrt(static_cast<double>(std::max(rows, cols)));
    return std::sqrt(std::max(1.0, static_cast<double>(rows) / static_cast<double>(cols)));
  }

  void step() override {
    torch::NoGradGuard g;
    ++t_;
    for (auto& s : muon_) {
      auto p = s.np.param;
      if (!p.grad().defined()) continue;
      auto grad = p.grad();
      s.buf.mul_(momentum_).add_(grad);
      // Nesterov: look ahead along the momentum, g + beta * buf.
      auto u = nesterov_ ? grad.add(s.buf, momentum_) : s.buf;
      if (wd_ != 0) p.mul_(1.0 - current_lr() * wd_);
      int64_t r0 = 0;
      for (int64_t rows : s.rows) {
        auto part = u.narrow(0, r0, rows);
        p.narrow(0, r0, rows).add_(newton_schulz(part, ns_steps_), -current_lr() * shape_scale(rows, p.size(1)));
        r0 += rows;
      }
    }
    for (auto& s : adam_.all())
      if (s.np.param.grad().defined())
        adamw_update(s.np.param, s.np.param.grad(), s.first, s.second, t_, current_lr(adam_group_), b1_, b2_, adam_eps_,
                     s.decay ? adam_wd_ : 0.0);
  }

  TensorMap state_dict() const override {
    TensorMap out;
    out["step"] = at::full({}, t_, at::kLong);
    for (const auto& s : muon_) out[s.np.name + ".momentum_buffer"] = s.buf;
    adam_.save(out);
    return out;
  }

  void load_state_dict(const TensorMap& st) override {
    torch::NoGradGuard g;
    std::set<std::string> keys{"step"};
    for (const auto& s : muon_) keys.insert(s.np.name + ".momentum_buffer");
    adam_.add_keys(keys);
    check_state_keys(st, keys, "muon");
    const int64_t step = state_count(st, "step", "muon");
    for (const auto& s : muon_) state_tensor(st, s.np.name + ".momentum_buffer", s.buf, false, "muon");
    adam_.load(st);
    for (auto& s : muon_) s.buf.copy_(st.at(s.np.name + ".momentum_buffer"));
    t_ = step;
  }

  std::string describe_groups() const override {
    int64_t n_muon = 0, n_adam = 0, n_split = 0;
    for (const auto& s : muon_) n_muon += s.np.param.numel(), n_split += s.rows.size() > 1;
    for (const auto& s : adam_.all()) n_adam += s.np.param.numel();
    std::ostringstream o;
    o << "muon group: " << muon_.size() << " tensors, " << n_muon << " parameters (lr " << base_lr() << ", momentum "
      << momentum_ << (nesterov_ ? " nesterov" : "") << ", scale " << (rms_scale_ ? "rms" : "ratio")
      << ", weight_decay " << wd_ << ", " << n_split << " fused matrices split); adamw group: " << adam_.all().size()
      << " tensors, " << n_adam << " parameters (lr " << base_lr(adam_group_) << ", betas [" << b1_ << ", " << b2_
      << "], weight_decay " << adam_wd_ << ")";
    return o.str();
  }

 private:
  struct MuonSlot {
    NamedParameter np;
    std::vector<int64_t> rows;  // row counts of the logical sub-matrices (one entry: unsplit)
    at::Tensor buf;             // momentum buffer
  };
  std::vector<MuonSlot> muon_;
  MomentSlots adam_;   // the inner AdamW: first exp_avg, second exp_avg_sq
  size_t adam_group_;  // its lr group
  double momentum_, wd_;
  bool nesterov_, rms_scale_;
  int64_t ns_steps_;
  double adam_eps_, adam_wd_, b1_ = 0.9, b2_ = 0.95;
  int64_t t_ = 0;
};

void register_muon(Registry& r) {
  r.add_optimizer(
      "muon",
      "Muon: Newton-Schulz-orthogonalised momentum for 2-D hidden matrices, AdamW for the rest. Default "
      "rule: muon = 2-D tensors of role matrix (as their block declares them); every other role (embedding, "
      "head, norm, bias, ssm_dynamics, conv, other) adamw (overridable with muon_params / adamw_params)",
      {
          {"lr", ParamType::Float, "0.02", "learning rate of the muon group (spectral step size)", {}, 0},
          {"momentum", ParamType::Float, "0.95", "momentum of the muon group", {}, 0, 1},
          {"nesterov", ParamType::Bool, "true", "Nesterov momentum (orthogonalise g + momentum * buffer)"},
          {"ns_steps", ParamType::Int, "5", "quintic Newton-Schulz iterations"},
          {"scale",
           ParamType::String,
           "ratio",
           "shape scale of the orthogonalised update: ratio = max(1, rows/cols)^0.5; rms = "
           "0.2*sqrt(max(rows, cols)) (RMS like AdamW's, so AdamW-sized lr)",
           {"ratio", "rms"}},
          {"weight_decay", ParamType::Float, "0.0", "decoupled weight decay of the muon group (p *= 1 - lr*wd)", {}, 0},
          {"adamw_lr", ParamType::Float, "3e-3", "learning rate of the inner AdamW group", {}, 0},
          {"adamw_betas", ParamType::FloatList, "[0.9, 0.95]", "inner AdamW moment decay rates"},
          {"adamw_eps", ParamType::Float, "1e-8", "inner AdamW denominator epsilon", {}, 0},
          {"adamw_weight_decay",
           ParamType::Float,
           "0.0",
           "inner AdamW decoupled weight decay (on the roles adamw decays: >= 2-D head, conv and other tensors, e.g. "
           "an untied lm_head)",
           {},
           0},
          {"muon_params", ParamType::StringList, "[]",
           "parameter-name globs forced into the muon group (2-D only; wins)"},
          {"adamw_params", ParamType::StringList, "[]", "parameter-name globs forced into the inner AdamW group"},
      },
      [](const std::vector<NamedParameter>& ps, const Params& p) { return std::make_shared<Muon>(ps, p); });
}

}  // namespace
}  // namespace linearnexus

LINEARNEXUS_PLUGIN("muon", "1.0.0", "Muon optimizer (orthogonalised momentum) with an inner AdamW",
                   linearnexus::register_muon)
