// The `gla` block: gated linear attention (Yang et al., 2024) + MLP. A linear-attention block whose
// decoding state is one fixed [Dk, Dv] matrix per head, decayed by a data-dependent gate per key
// channel.
//
//   h = norm(x);  (q, k, v, g) = qkvg(h)                  one fused projection; q scaled by Dk^-1/2
//   log alpha = logsigmoid(gk2(gk1(h))) / gate_normalizer  low-rank gate, a decay per key channel
//   S_t = diag(alpha_t) S_{t-1} + k_t^T v_t;  o_t = q_t S_t      per head
//   x = x + o_proj(silu(g) * headnorm(o));  x = x + mlp(norm(x))
//
// The recurrence's math lives in core (chunked_scan.h): the chunked form for training and prefill,
// the recurrent form for decoding (and, with scan: recurrent, as the tests' reference).
#include <linearnexus/chunked_scan.h>
#include <linearnexus/error.h>
#include <linearnexus/layers.h>
#include <linearnexus/model.h>
#include <linearnexus/plugin.h>

#include <cmath>

namespace linearnexus {
namespace {

class GLABlock : public Block {
 public:
  GLABlock(const ModelDims& d, const Params& p)
      : C_(d.hidden_size),
        H_(p.get_int("n_head")),
        Q_(p.get_int("chunk_size")),
        Kd_(std::llround(p.get_float("expand_k") * d.hidden_size)),
        norm_gate_(p.get_float("gate_normalizer")),
        recurrent_(p.get_string("scan") == "recurrent") {
    if (C_ % H_ != 0 || Kd_ % H_ != 0 || Kd_ == 0)
      throw Error("model.blocks.gla.n_head (" + std::to_string(H_) + ") must divide hidden_size (" +
                  std::to_string(C_) + ") and the key width expand_k * hidden_size (" + std::to_string(Kd_) + ")");
    Dk_ = Kd_ / H_, Dv_ = C_ / H_;
    const int64_t rank = p.get_int("gate_low_rank");
    ln1_ = register_module("ln1", std::make_shared<Norm>(C_, d));
    qkvg_ = register_module("qkvg", torch::nn::Linear(torch::nn::LinearOptions(C_, 2 * Kd_ + 2 * C_).bias(false)));
    gk1_ = register_module("gk1", torch::nn::Linear(torch::nn::LinearOptions(C_, rank).bias(false)));
    gk2_ = register_module("gk2", torch::nn::Linear(torch::nn::LinearOptions(rank, Kd_).bias(true)));
    o_norm_ = register_module("o_norm", std::make_shared<RMSNorm>(Dv_));
    o_proj_ = register_module("o_proj", torch::nn::Linear(torch::nn::LinearOptions(C_, C_).bias(false)));
    tail_ = ResidualMLP(*this, d, p.get_string("mlp"), p.get_int("mlp_hidden"));  // ln2, mlp
    torch::NoGradGuard g;
    init_linear(qkvg_);
    init_linear(gk1_);
    init_linear(gk2_);
    // A zero gate bias: log alpha starts at logsigmoid(~0) / 16 ~ -0.04, a memory of ~25 tokens.
    init_residual_projection(o_proj_, d.n_layer);
  }

  BlockOutput forward(const at::Tensor& x, LayerState state, const ForwardContext& ctx) override {
    // x: [B, T, C] -> [B, T, C]
    const int64_t B = x.size(0), T = x.size(1);
    auto heads = [&](const at::Tensor& t, int64_t D) { return t.reshape({B, T, H_, D}).transpose(1, 2); };
    auto h = ln1_->forward(x);
    auto qkvg = qkvg_(h);                                                   // [B, T, 2 Kd + 2 C]
    auto q = heads(qkvg.narrow(-1, 0, Kd_), Dk_) / std::sqrt(double(Dk_));  // [B, H, T, Dk]
    auto k = heads(qkvg.narrow(-1, Kd_, Kd_), Dk_);                         // [B, H, T, Dk]
    auto v = heads(qkvg.narrow(-1, 2 * Kd_, C_), Dv_);                      // [B, H, T, Dv]
    auto gate = qkvg.narrow(-1, 2 * Kd_ + C_, C_);                          // [B, T, C]
    auto log_alpha = at::log_sigmoid(gk2_(gk1_(h))) / norm_gate_;           // [B, T, Kd], < 0
    // A left-padding token (batched generation) must neither write (k = 0) nor decay (alpha = 1).
    if (auto keep = ctx.new_token_keep(T, x.device(), x.scalar_type()); keep.defined()) {  // [B, T, 1]
      k = k * keep.unsqueeze(1);
      log_alpha = log_alpha * keep;
    }
    auto g = heads(log_alpha, Dk_);  // [B, H, T, Dk]
    const bool cached = !state.empty() && ctx.mode != Mode::Train;
    at::Tensor S = cached ? state.tensors.at("S") : at::Tensor();  // [B, H, Dk, Dv] fp32
    auto o = ctx.mode == Mode::Decode || recurrent_ ? decay_scan_recurrent(q, k, v, g, S)
                                                    : decay_scan_chunked(q, k, v, g, S, Q_);  // [B, H, T, Dv]
    if (cached) state.tensors["S"] = S.detach();
    auto y = o_proj_(at::silu(gate) * o_norm_->forward(o).transpose(1, 2).reshape({B, T, C_}));
    return {tail_.forward(x, y, is_training()), std::move(state)};  // x + y, then + mlp(norm(.))
  }

  // Decoding reads positions and padding from the context only (no host-side step): capturable.
  bool graph_safe_decode() const override { return true; }

  LayerState init_state(int64_t B, int64_t, const at::TensorOptions& o) const override {
    LayerState s;  // the whole history in one [Dk, Dv] matrix per head, whatever max_len is
    s.tensors["S"] = at::zeros({B, H_, Dk_, Dv_}, o.dtype(at::kFloat));
    return s;
  }

  std::map<std::string, std::vector<int64_t>> fused_splits() const override {
    return {{"qkvg.weight", {Kd_, Kd_, C_, C_}}};
  }

  // The decay gate (gk1, gk2) makes decays, not features: never orthogonalised by Muon (`other`, still
  // weight-decayed as a 2-D tensor), its bias `ssm_dynamics`.
  std::map<std::string, ParamRole> parameter_roles() const override {
    auto roles = tail_.parameter_roles();
    roles["ln1.weight"] = roles["o_norm.weight"] = ParamRole::Norm;
    declare_roles(roles, *ln1_, "ln1.", ParamRole::Norm);  // a LayerNorm's bias too (model.norm)
    roles["qkvg.weight"] = roles["o_proj.weight"] = ParamRole::Matrix;
    roles["gk1.weight"] = roles["gk2.weight"] = ParamRole::Other;
    roles["gk2.bias"] = ParamRole::SsmDynamics;
    return roles;
  }

 private:
  int64_t C_, H_, Q_, Kd_, Dk_ = 0, Dv_ = 0;
  double norm_gate_;
  bool recurrent_;
  std::shared_ptr<Norm> ln1_;
  std::shared_ptr<RMSNorm> o_norm_;
  torch::nn::Linear qkvg_{nullptr}, gk1_{nullptr}, gk2_{nullptr}, o_proj_{nullptr};
  ResidualMLP tail_;
};

}  // namespace

void register_gla(Registry& r) {
  r.add_block(
      "gla", "gated linear attention (a data-dependent decay per key channel; chunked + recurrent) + MLP",
      join_schemas(
          {
              {"n_head", ParamType::Int, "4", "heads; hidden_size and expand_k * hidden_size split evenly", {}, 1},
              {"expand_k",
               ParamType::Float,
               "0.5",
               "key width = expand_k * hidden_size (the state is [Dk, Dv] per head)",
               {},
               1.0 / 64,
               4},
              {"gate_low_rank", ParamType::Int, "16", "rank of the decay gate's projection", {}, 1},
              {"gate_normalizer",
               ParamType::Float,
               "16.0",
               "log alpha = logsigmoid(.) / this: larger keeps decays nearer 1 (longer memory)",
               {},
               1},
              chunk_size_spec("16", 256, "(its pairwise part is chunk^2 * Dk per head)"),
              scan_spec(),
          },
          mlp_schema()),
      [](const ModelDims& d, const Params& p, int64_t) { return std::make_shared<GLABlock>(d, p); });
}

}  // namespace linearnexus

LINEARNEXUS_PLUGIN("gla", "1.0.0", "gated linear attention block (chunked training, recurrent decoding)",
                   linearnexus::register_gla)
