// The `deltanet`, `gated_deltanet` and `kda` blocks: linear attention with the delta rule (Schlag et
// al., 2021; Yang et al., 2024), its gated form (Gated DeltaNet, Yang, Kautz & Hatamizadeh, 2024) and
// its channel-wise gated form (Kimi Delta Attention, Kimi Linear, 2025) + MLP.
//
//   h = norm(x);  (q, k, v) = silu(shortconv(qkv(h)))         the short conv is optional
//   q, k L2-normalised per head (q also scaled by D^-1/2);  beta = sigmoid(b(h)) per head
//   S_t = alpha_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t^T v_t;   o_t = q_t S_t
//     deltanet:        alpha_t = 1
//     gated_deltanet:  log alpha_t = -exp(A_log) softplus(a(h) + dt_bias)   (Mamba-2's decay per head)
//     kda:             S_t = (I - beta_t k_t k_t^T) diag(alpha_t) S_{t-1} + beta_t k_t^T v_t with a decay
//                      per key channel, log alpha_t = -exp(A_log) softplus(f2(f1(h)) + dt_bias)
//                      (f1 f2 low-rank, rank D; dt_bias per channel)
//   x = x + o_proj(headnorm(o) [* silu(gate(h)) when gated or kda]);  x = x + mlp(norm(x))
// kda's output gate is gated_deltanet's full-rank silu gate (the paper's is a low-rank sigmoid one).
//
// The delta rule writes v_t along k_t after erasing what S held there (beta_t of it): a memory that
// overwrites instead of only accumulating. With |k| = 1 and beta in (0, 1) every step contracts, so
// the state stays bounded. The math is core's (chunked_scan.h): the chunked WY / UT-transform form
// for training and prefill, the recurrence for decoding; kda's per-channel decay goes through the
// generalised delta rule there (read along alpha * k, write along -beta k). On CUDA, with
// LINEARNEXUS_DELTA_KERNEL=1, deltanet and gated_deltanet train and prefill through fused chunk kernels
// instead (delta_chunk.cu, head_dim 64 or 128); the CPU path is unchanged.
#include <linearnexus/chunked_scan.h>
#include <linearnexus/error.h>
#include <linearnexus/layers.h>
#include <linearnexus/model.h>
#include <linearnexus/plugin.h>

#include <cmath>
#include <cstdlib>
#include <string>

#include "delta_chunk_gpu.h"

#include "hf_fla_deltanet.h"

namespace linearnexus {
namespace {

// LINEARNEXUS_DELTA_KERNEL=1: training and prefill on CUDA take the delta-rule chunk kernels.
bool delta_kernel_enabled() {
  const char* e = std::getenv("LINEARNEXUS_DELTA_KERNEL");
  return e && std::string(e) == "1";
}

enum class Gating { None, PerHead, PerChannel };  // deltanet, gated_deltanet, kda

class DeltaNetBlock : public Block {
 public:
  DeltaNetBlock(const ModelDims& d, const Params& p, Gating gating)
      : name_(gating == Gating::None      ? "deltanet"
              : gating == Gating::PerHead ? "gated_deltanet"
                                          : "kda"),
        C_(d.hidden_size),
        H_(p.get_int("n_head")),
        Q_(p.get_int("chunk_size")),
        Kc_(p.get_bool("short_conv") ? p.get_int("conv_size") : 0),
        gating_(gating),
        gated_(gating != Gating::None),
        recurrent_(p.get_string("scan") == "recurrent") {
    if (C_ % H_ != 0)
      throw Error("model.blocks." + name_ + ".n_head (" + std::to_string(H_) + ") must divide hidden_size (" +
                  std::to_string(C_) + ")");
    D_ = C_ / H_;
    ln1_ = register_module("ln1", std::make_shared<Norm>(C_, d));
    qkv_ = register_module("qkv", torch::nn::Linear(torch::nn::LinearOptions(C_, 3 * C_).bias(false)));
    // beta (and, gated, the decay's input a) per head: H (or 2 H) rows.
    const bool per_head = gating == Gating::PerHead;
    ba_ = register_module("ba", torch::nn::Linear(torch::nn::LinearOptions(C_, per_head ? 2 * H_ : H_).bias(false)));
    if (Kc_ > 0) conv_weight_ = register_parameter("conv_weight", torch::empty({3 * C_, Kc_}));
    if (gated_) {
      A_log_ = register_parameter("A_log", torch::empty({H_}));
      dt_bias_ = register_parameter("dt_bias", torch::empty({per_head ? H_ : C_}));
      gate_ = register_module("gate", torch::nn::Linear(torch::nn::LinearOptions(C_, C_).bias(false)));
    }
    if (gating == Gating::PerChannel) {  // the decay's low-rank input, rank D
      f1_ = register_module("f1", torch::nn::Linear(torch::nn::LinearOptions(C_, D_).bias(false)));
      f2_ = register_module("f2", torch::nn::Linear(torch::nn::LinearOptions(D_, C_).bias(false)));
    }
    o_norm_ = register_module("o_norm", std::make_shared<RMSNorm>(D_, p.get_float("o_norm_eps")));
    o_proj_ = register_module("o_proj", torch::nn::Linear(torch::nn::LinearOptions(C_, C_).bias(false)));
    tail_ = ResidualMLP(*this, d, p.get_string("mlp"), p.get_int("mlp_hidden"));  // ln2, mlp

    torch::NoGradGuard g;
    init_linear(qkv_);
    init_linear(ba_);  // beta starts near sigmoid(0) = 1/2
    init_residual_projection(o_proj_, d.n_layer);
    if (Kc_ > 0) conv_weight_.uniform_(-1.0 / std::sqrt(double(Kc_)), 1.0 / std::sqrt(double(Kc_)));
    if (gated_) {
      init_linear(gate_);
      A_log_.copy_((torch::rand({H_}) * 15 + 1).log());  // A in [1, 16], dt in [1e-3, 0.1]: as Mamba-2
      auto dt = (torch::rand({dt_bias_.size(0)}) * (std::log(0.1) - std::log(1e-3)) + std::log(1e-3)).exp();
      dt_bias_.copy_(dt + at::log(-at::expm1(-dt)));
    }
    if (gating == Gating::PerChannel) {
      init_linear(f1_);
      init_linear(f2_);
    }
  }

  BlockOutput forward(const at::Tensor& x, LayerState state, const ForwardContext& ctx) override {
    // x: [B, T, C] -> [B, T, C]
    const int64_t B = x.size(0), T = x.size(1);
    auto h = ln1_->forward(x);
    auto qkv = qkv_(h);  // [B, T, 3 C]
    // Left padding: zero the conv's input there (as its zero history) and beta and the decay (the
    // token writes nothing and decays nothing): the state is as if the token were absent.
    auto keep = ctx.new_token_keep(T, x.device(), x.scalar_type());  // [B, T, 1] or undefined
    const bool cached = !state.empty() && ctx.mode != Mode::Train;
    if (Kc_ > 0) {
      if (keep.defined()) qkv = qkv * keep;
      at::Tensor new_history;
      qkv = causal_depthwise_conv1d(qkv, conv_weight_, {}, cached ? state.tensors.at("conv_state") : at::Tensor(),
                                    cached ? &new_history : nullptr);
      if (cached) state.tensors["conv_state"] = new_history.detach();
    }
    qkv = at::silu(qkv);
    auto heads = [&](int64_t i) { return qkv.narrow(-1, i * C_, C_).reshape({B, T, H_, D_}).transpose(1, 2); };
    auto l2 = [](const at::Tensor& t) { return t * at::rsqrt(t.pow(2).sum(-1, true) + 1e-6); };
    auto q = l2(heads(0)) / std::sqrt(double(D_)), k = l2(heads(1)), v = heads(2);  // [B, H, T, D]
    auto ba = ba_(h).to(at::kFloat);                                                // [B, T, H or 2 H]
    auto beta = at::sigmoid(ba.narrow(-1, 0, H_));                                  // [B, T, H]
    at::Tensor g;  // log-decays: [B, T, H] (gated_deltanet) or [B, T, C] (kda)
    if (gating_ == Gating::PerHead) g = -A_log_.exp() * at::softplus(ba.narrow(-1, H_, H_) + dt_bias_);
    if (gating_ == Gating::PerChannel)  // A per head, spread over its D channels: an expand, not
      // repeat_interleave, whose integer form some LibTorch versions build from a host tensor (a copy
      // a captured decode step may not make)
      g = -A_log_.exp().unsqueeze(-1).expand({H_, D_}).reshape({C_}) *
          at::softplus(f2_(f1_(h)).to(at::kFloat) + dt_bias_);
    if (keep.defined()) {
      beta = beta * keep.to(at::kFloat);
      if (g.defined()) g = g * keep.to(at::kFloat);
    }
    beta = beta.transpose(1, 2);                                   // [B, H, T]
    at::Tensor S = cached ? state.tensors.at("S") : at::Tensor();  // [B, H, D, D] fp32
    const bool recurrent = ctx.mode == Mode::Decode || recurrent_;
    at::Tensor o;  // [B, H, T, D]
    if (gating_ == Gating::PerChannel) {
      // (I - beta k k^T) diag(alpha) S + beta k^T v: read along alpha k, write along -beta k.
      g = g.reshape({B, T, H_, D_}).transpose(1, 2);  // [B, H, T, D]
      auto bk = k * beta.unsqueeze(-1), a = k * g.exp();
      o = recurrent ? gdelta_scan_recurrent(q, bk, v, a, -bk, g, S) : gdelta_scan_chunked(q, bk, v, a, -bk, g, S, Q_);
    } else {
      if (g.defined()) g = g.transpose(1, 2);  // [B, H, T]
      if (!recurrent && delta_kernel_enabled() && deltanet::delta_cuda_applies(q, D_)) {
        // CUDA, fp32 or bf16, head_dim 64 or 128 (training, prefill): the fused chunk kernels
        // (delta_chunk.cu), chunks of 64 whatever chunk_size; their matmuls take bf16 operands. NOT YET
        // RUN ON A GPU: verified in the CPU emulator (emu/run.sh) only, so behind
        // LINEARNEXUS_DELTA_KERNEL=1 (off by default) until test_delta_chunk_gpu, which checks them
        // against the path below, has passed on one.
        auto r = deltanet::delta_chunk_cuda(q, k, v, beta, g, S);
        o = r.o;
        S = r.state;
      } else {
        o = recurrent ? delta_scan_recurrent(q, k, v, beta, g, S) : delta_scan_chunked(q, k, v, beta, g, S, Q_);
      }
    }
    if (cached) state.tensors["S"] = S.detach();
    auto y = o_norm_->forward(o).transpose(1, 2).reshape({B, T, C_});
    if (gated_) y = y * at::silu(gate_(h));
    return {tail_.forward(x, o_proj_(y), is_training()), std::move(state)};  // x + y, then + mlp(norm(.))
  }

  // Decoding reads positions and padding from the context only (no host-side step): capturable,
  // for all three variants (kda too: tests/test_decode_gpu.cpp replays each).
  bool graph_safe_decode() const override { return true; }

  LayerState init_state(int64_t B, int64_t, const at::TensorOptions& o) const override {
    LayerState s;  // fixed-size whatever max_len is
    if (Kc_ > 0) s.tensors["conv_state"] = at::zeros({B, 3 * C_, Kc_ - 1}, o);
    s.tensors["S"] = at::zeros({B, H_, D_, D_}, o.dtype(at::kFloat));
    return s;
  }

  std::map<std::string, std::vector<int64_t>> fused_splits() const override {
    std::map<std::string, std::vector<int64_t>> s{{"qkv.weight", {C_, C_, C_}}};
    if (gating_ == Gating::PerHead) s["ba.weight"] = {H_, H_};
    if (Kc_ > 0) s["conv_weight"] = {C_, C_, C_};  // q's, k's, v's channels (fla's q/k/v_conv1d)
    return s;
  }

  // beta and the decay's input (ba; kda: f1, f2) make per-head scalars and decays, not features:
  // `other` (never orthogonalised by Muon, weight-decayed as 2-D tensors); the decay's A_log and
  // dt_bias are `ssm_dynamics`.
  std::map<std::string, ParamRole> parameter_roles() const override {
    auto roles = tail_.parameter_roles();
    roles["ln1.weight"] = roles["o_norm.weight"] = ParamRole::Norm;
    declare_roles(roles, *ln1_, "ln1.", ParamRole::Norm);  // a LayerNorm's bias too (model.norm)
    roles["qkv.weight"] = roles["o_proj.weight"] = ParamRole::Matrix;
    roles["ba.weight"] = ParamRole::Other;
    if (Kc_ > 0) roles["conv_weight"] = ParamRole::Conv;
    if (gated_) {
      roles["gate.weight"] = ParamRole::Matrix;
      roles["A_log"] = roles["dt_bias"] = ParamRole::SsmDynamics;
    }
    if (gating_ == Gating::PerChannel) roles["f1.weight"] = roles["f2.weight"] = ParamRole::Other;
    return roles;
  }

 private:
  std::string name_;
  int64_t C_, H_, Q_, Kc_, D_ = 0;
  Gating gating_;
  bool gated_, recurrent_;
  std::shared_ptr<Norm> ln1_;
  std::shared_ptr<RMSNorm> o_norm_;
  torch::nn::Linear qkv_{nullptr}, ba_{nullptr}, gate_{nullptr}, o_proj_{nullptr}, f1_{nullptr}, f2_{nullptr};
  at::Tensor conv_weight_, A_log_, dt_bias_;
  ResidualMLP tail_;
};

Schema deltanet_schema() {
  return join_schemas(
      {
          {"n_head",
           ParamType::Int,
           "4",
           "heads; head_dim = hidden_size / n_head (the state is [D, D] per head)",
           {},
           1},
          chunk_size_spec("32", 512, "(the WY / UT form)"),
          {"short_conv", ParamType::Bool, "true", "a causal depthwise conv on q, k and v before the activation"},
          {"conv_size", ParamType::Int, "4", "width of the short conv", {}, 2, 64},
          scan_spec(),
          // fla's layers take config.json's norm_eps (1e-6 by default) here; hf-import sets it so.
          {"o_norm_eps", ParamType::Float, "1e-5", "epsilon of the per-head output RMSNorm", {}, 0},
      },
      mlp_schema());
}

}  // namespace

void register_deltanet(Registry& r) {
  r.add_block(
      "deltanet", "DeltaNet: linear attention with the delta rule (L2-normalised q/k, learned beta) + MLP",
      deltanet_schema(),
      [](const ModelDims& d, const Params& p, int64_t) { return std::make_shared<DeltaNetBlock>(d, p, Gating::None); },
      BlockHooks{{}, fla_deltanet_hf_adapter()});
  r.add_block(
      "gated_deltanet", "Gated DeltaNet: the delta rule with a data-dependent decay per head, output gate + MLP",
      deltanet_schema(),
      [](const ModelDims& d, const Params& p, int64_t) {
        return std::make_shared<DeltaNetBlock>(d, p, Gating::PerHead);
      },
      BlockHooks{{}, fla_gated_deltanet_hf_adapter()});
  r.add_block("kda",
              "Kimi Delta Attention: the delta rule with a data-dependent decay per key channel, output gate + MLP",
              deltanet_schema(), [](const ModelDims& d, const Params& p, int64_t) {
                return std::make_shared<DeltaNetBlock>(d, p, Gating::PerChannel);
              });
}

}  // namespace linearnexus

LINEARNEXUS_PLUGIN("deltanet", "1.0.0", "DeltaNet, Gated DeltaNet and KDA blocks (chunked WY form, recurrent decoding)",
                   linearnexus::register_deltanet)
