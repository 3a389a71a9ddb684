// The `retention` block: RetNet-style multi-scale retention (Sun et al., 2023) + MLP. A linear-
// attention block: its decoding state is a fixed-size matrix per head instead of a growing KV cache.
//
//   (q, k, v, g) = qkvg(norm(x))              one fused projection; q, k rotated by RoPE, k / sqrt(D)
//   S_t = gamma_h S_{t-1} + k_t^T v_t          per head h, S [D, D];  o_t = q_t S_t
//   x = x + proj(silu(g) * headnorm(o));  x = x + mlp(norm(x))
//
// gamma_h = 1 - 2^(-5 - h): a fixed decay per head (head 0 forgets fastest). Two forms, one result:
//   chunked    (Train, Prefill) chunks of chunk_size tokens: inside a chunk the parallel form
//              (q k^T * decay mask) v, plus the state entering the chunk; then the state moves on;
//   recurrent  (Decode) the recurrence above, one token at a time on the state.
#include <linearnexus/error.h>
#include <linearnexus/layers.h>
#include <linearnexus/model.h>
#include <linearnexus/plugin.h>

#include <cmath>

namespace retention {
using namespace linearnexus;

class RetentionBlock : public Block {
 public:
  RetentionBlock(const ModelDims& d, const Params& p)
      : C_(d.hidden_size), H_(p.get_int("n_head")), Q_(p.get_int("chunk_size")), rope_(p.get_bool("rope")) {
    if (H_ <= 0 || C_ % H_ != 0 || (C_ / H_) % 2 != 0)
      throw Error("model.blocks.retention.n_head (" + std::to_string(H_) + ") must divide hidden_size (" +
                  std::to_string(C_) + ") into heads of an even size");
    if (Q_ <= 0) throw Error("model.blocks.retention.chunk_size must be positive");
    D_ = C_ / H_;
    ln1_ = register_module("ln1", std::make_shared<Norm>(C_, d));
    qkvg_ = register_module("qkvg", torch::nn::Linear(torch::nn::LinearOptions(C_, 4 * C_).bias(false)));
    proj_ = register_module("proj", torch::nn::Linear(torch::nn::LinearOptions(C_, C_).bias(false)));
    tail_ = ResidualMLP(*this, d, p.get_string("mlp"), p.get_int("mlp_hidden"));  // ln2, mlp
    init_linear(qkvg_);
    init_residual_projection(proj_, d.n_layer);
  }

  BlockOutput forward(const at::Tensor& x, LayerState state, const ForwardContext& ctx) override {
    // x: [B, T, C]
    const int64_t B = x.size(0), T = x.size(1);
    auto heads = [&](const at::Tensor& t) { return t.view({B, T, H_, D_}).transpose(1, 2); };  // [B, H, T, D]
    auto qkvg = qkvg_(ln1_->forward(x)).chunk(4, -1);                                          // 4 x [B, T, C]
    auto q = heads(qkvg[0]), k = heads(qkvg[1]) / std::sqrt(double(D_)), v = heads(qkvg[2]);
    if (rope_) {
      auto pos = ctx.position_ids(B, T, x.device());  // [B or 1, T]
      q = apply_rope(q, pos), k = apply_rope(k, pos);
    }
    // A left-padding token (batched generation) must add nothing to the state.
    if (auto keep = ctx.new_token_keep(T, k.device(), k.scalar_type()); keep.defined())  // [B, T, 1]
      k = k * keep.view({B, 1, T, 1});
    auto log_gamma = at::log1p(-at::pow(2.0, -5.0 - at::arange(H_, x.options())));  // [H], < 0
    const bool cached = !state.empty() && ctx.mode != Mode::Train;
    auto S = cached ? state.tensors.at("S") : at::zeros({B, H_, D_, D_}, x.options());  // [B, H, D, D]
    auto o = ctx.mode == Mode::Decode ? recurrent(q, k, v, log_gamma, S) : chunked(q, k, v, log_gamma, S);
    if (cached) state.tensors["S"] = S.detach();
    o = o * at::rsqrt(o.pow(2).mean(-1, true) + 1e-5);  // per-head RMS norm, [B, H, T, D]
    auto y = proj_(at::silu(qkvg[3]) * o.transpose(1, 2).reshape({B, T, C_}));
    return {tail_.forward(x, y, is_training()), std::move(state)};  // x + y, then + mlp(norm(.))
  }

  // Decoding reads positions and padding from the context only (no host-side step), so generation
  // can capture it in a CUDA graph (docs/writing_plugins.md, "Graph-captured decoding").
  bool graph_safe_decode() const override { return true; }

  LayerState init_state(int64_t B, int64_t max_len, const at::TensorOptions& o) const override {
    LayerState s;  // the whole history in a fixed [D, D] matrix per head, whatever max_len is
    s.tensors["S"] = at::zeros({B, H_, D_, D_}, o);
    return s;
  }

  std::map<std::string, std::vector<int64_t>> fused_splits() const override {
    return {{"qkvg.weight", {C_, C_, C_, C_}}};
  }

  // What each parameter is to the optimizers (Muon orthogonalises matrices; weight decay skips norms).
  std::map<std::string, ParamRole> parameter_roles() const override {
    auto roles = tail_.parameter_roles();                  // ln2: norm, mlp: matrix
    declare_roles(roles, *ln1_, "ln1.", ParamRole::Norm);  // weight, and bias under model.norm: layernorm
    roles["qkvg.weight"] = roles["proj.weight"] = ParamRole::Matrix;
    return roles;
  }

 private:
  // One token at a time. q, k, v [B, H, T, D]; log_gamma [H]; S [B, H, D, D] is updated.
  at::Tensor recurrent(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& log_gamma,
                       at::Tensor& S) {
    auto gamma = log_gamma.exp().view({1, H_, 1, 1});
    std::vector<at::Tensor> out;
    for (int64_t t = 0; t < q.size(2); ++t) {
      auto kt = k.narrow(2, t, 1), vt = v.narrow(2, t, 1);   // [B, H, 1, D]
      S = gamma * S + at::matmul(kt.transpose(-1, -2), vt);  // [B, H, D, D]
      out.push_back(at::matmul(q.narrow(2, t, 1), S));       // [B, H, 1, D]
    }
    return at::cat(out, 2);
  }

  // Chunks of Q_ tokens; inside one (token i, j at chunk offsets i >= j, the state entering S0):
  //   o_i = sum_j gamma^(i-j) (q_i . k_j) v_j + gamma^(i+1) q_i S0
  //   S   = gamma^n S0 + sum_j gamma^(n-1-j) k_j^T v_j
  // Only powers gamma^m with m >= 0 are formed: all in (0, 1], nothing overflows.
  at::Tensor chunked(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& log_gamma,
                     at::Tensor& S) {
    const int64_t T = q.size(2);
    auto lg = log_gamma.view({H_, 1, 1});
    std::vector<at::Tensor> out;
    for (int64_t t0 = 0; t0 < T; t0 += Q_) {
      const int64_t n = std::min(Q_, T - t0);
      auto qc = q.narrow(2, t0, n), kc = k.narrow(2, t0, n), vc = v.narrow(2, t0, n);  // [B, H, n, D]
      auto idx = at::arange(n, q.options());
      auto diff = idx.view({n, 1}) - idx.view({1, n});            // i - j, [n, n]
      auto decay = (diff.clamp_min(0) * lg).exp() * (diff >= 0);  // [H, n, n], 0 above the diagonal
      auto inner = at::matmul(at::matmul(qc, kc.transpose(-1, -2)) * decay, vc);
      auto from_state = at::matmul(qc * ((idx + 1).view({1, n, 1}) * lg).exp(), S);  // gamma^(i+1) q_i S0
      out.push_back(inner + from_state);
      auto k_to_end = kc * ((n - 1 - idx).view({1, n, 1}) * lg).exp();  // gamma^(n-1-j) k_j
      S = (lg * double(n)).exp() * S + at::matmul(k_to_end.transpose(-1, -2), vc);
    }
    return at::cat(out, 2);  // [B, H, T, D]
  }

  int64_t C_, H_, Q_, D_ = 0;
  bool rope_;
  std::shared_ptr<Norm> ln1_;
  torch::nn::Linear qkvg_{nullptr}, proj_{nullptr};
  ResidualMLP tail_;
};

void register_retention(Registry& r) {
  r.add_block("retention", "RetNet-style multi-scale retention (linear attention, per-head decay) + MLP",
              {
                  {"n_head", ParamType::Int, "4", "heads; head_dim = hidden_size / n_head (even); decays 1 - 2^(-5-h)"},
                  {"chunk_size", ParamType::Int, "64", "tokens per chunk of the training / prefill form"},
                  {"rope", ParamType::Bool, "true", "rotary position embedding on q and k"},
                  {"mlp", ParamType::String, "swiglu", "MLP kind", {"swiglu", "gelu"}},
                  {"mlp_hidden", ParamType::Int, "0", "MLP width (0 = 8/3 C for swiglu, 4 C for gelu)"},
              },
              [](const ModelDims& d, const Params& p, int64_t) { return std::make_shared<RetentionBlock>(d, p); });
}

}  // namespace retention

LINEARNEXUS_PLUGIN("retention", "0.1.0", "RetNet-style retention block (example out-of-tree plugin)",
                   retention::register_retention)
