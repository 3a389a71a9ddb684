// The `mamba2` block: a pre-norm residual Mamba-2 (SSD) block (Dao & Gu, 2024).
//
//   h = norm(x);  (z, xBC) = in_proj(h);  dt = dt_proj(h)        dt apart: it is a decay, not a feature
//   (xs, B, C) = silu(causal_depthwise_conv1d(xBC))               d_conv taps over time
//   dt = softplus(dt + dt_bias) [per head];  A = -exp(A_log) [per head]
//   s_t = exp(dt_t A) s_{t-1} + dt_t B_t^T xs_t;  y_t = C_t s_t + D xs_t   per head, s [N, P]
//   x = x + out_proj(norm_g(y * silu(z)))
//
// One scalar decay per head (unlike Mamba-1's per channel and state) is what makes SSD a matmul:
// it is core's decay scan (chunked_scan.h) with q = C, k = dt B, v = xs, log-decay dt A. B and C are
// shared by the n_head / n_groups heads of a group (like GQA's keys). On CUDA under bf16, training and
// prefill can take the SSD chunk kernels instead (ssd_chunk.cu: B and C per group, never expanded;
// behind LINEARNEXUS_SSD_KERNEL=1 while they have not run on a GPU, verified in a CPU emulator only). The state per layer is
// {"conv_state" [B, d_inner + 2 G N, d_conv - 1], "ssm_state" [B, H, N, P] fp32}.
#include <linearnexus/chunked_scan.h>
#include <linearnexus/error.h>
#include <linearnexus/layers.h>
#include <linearnexus/model.h>
#include <linearnexus/plugin.h>

#include <cmath>
#include <cstdlib>
#include <string>

#include "hf_mamba2.h"
#include "ssd_chunk_gpu.h"

namespace linearnexus {
namespace {

// LINEARNEXUS_SSD_KERNEL=1: training and prefill on CUDA under bf16 take the SSD chunk kernels.
bool ssd_kernel_enabled() {
  const char* e = std::getenv("LINEARNEXUS_SSD_KERNEL");
  return e && std::string(e) == "1";
}

class Mamba2Block : public Block {
 public:
  Mamba2Block(const ModelDims& d, const Params& p)
      : C_(d.hidden_size),
        N_(p.get_int("d_state")),
        K_(p.get_int("d_conv")),
        Din_(p.get_int("expand") * C_),
        P_(p.get_int("head_dim")),
        G_(p.get_int("n_groups")),
        Q_(p.get_int("chunk_size")),
        recurrent_(p.get_string("scan") == "recurrent"),
        dropout_(d.dropout) {
    if (Din_ % P_ != 0)
      throw Error("model.blocks.mamba2.head_dim (" + std::to_string(P_) + ") must divide expand * hidden_size (" +
                  std::to_string(Din_) + ")");
    H_ = Din_ / P_;
    if (H_ % G_ != 0)
      throw Error("model.blocks.mamba2.n_groups (" + std::to_string(G_) + ") must divide the number of heads (" +
                  std::to_string(H_) + " = expand * hidden_size / head_dim)");
    const double dt_min = p.get_float("dt_min"), dt_max = p.get_float("dt_max");
    if (dt_min > dt_max) throw Error("model.blocks.mamba2.dt_min must not exceed dt_max");
    Dxbc_ = Din_ + 2 * G_ * N_;
    norm_ = register_module("norm", std::make_shared<Norm>(C_, d));
    in_proj_ = register_module("in_proj", torch::nn::Linear(torch::nn::LinearOptions(C_, Din_ + Dxbc_).bias(false)));
    dt_proj_ = register_module("dt_proj", torch::nn::Linear(torch::nn::LinearOptions(C_, H_).bias(false)));
    conv_weight_ = register_parameter("conv_weight", torch::empty({Dxbc_, K_}));
    if (p.get_bool("conv_bias")) conv_bias_ = register_parameter("conv_bias", torch::empty({Dxbc_}));
    dt_bias_ = register_parameter("dt_bias", torch::empty({H_}));
    A_log_ = register_parameter("A_log", torch::empty({H_}));
    D_ = register_parameter("D", torch::empty({H_}));
    // model.norm_eps, as Mamba2ForCausalLM's gated norm
    gnorm_ = register_module("gnorm", std::make_shared<RMSNorm>(Din_, d.norm_eps));
    out_proj_ = register_module("out_proj", torch::nn::Linear(torch::nn::LinearOptions(Din_, C_).bias(false)));

    torch::NoGradGuard g;
    init_linear(in_proj_);
    init_linear(dt_proj_);
    init_residual_projection(out_proj_, d.n_layer);
    const double cb = 1.0 / std::sqrt(static_cast<double>(K_));  // PyTorch's Conv1d init, fan_in = d_conv
    conv_weight_.uniform_(-cb, cb);
    if (conv_bias_.defined()) conv_bias_.uniform_(-cb, cb);
    // dt_bias = softplus^-1 of a dt drawn log-uniformly in [dt_min, dt_max]: each head its own time scale.
    const double lo = std::log(dt_min), hi = std::log(dt_max);
    auto dt = (torch::rand({H_}) * (hi - lo) + lo).exp().clamp_min(p.get_float("dt_init_floor"));
    dt_bias_.copy_(dt + at::log(-at::expm1(-dt)));
    // A in [1, 16] per head, as the reference implementation draws it.
    A_log_.copy_((torch::rand({H_}) * 15 + 1).log());
    D_.fill_(1.0);
  }

  BlockOutput forward(const at::Tensor& x, LayerState state, const ForwardContext& ctx) override {
    // x: [B, T, C] -> [B, T, C]
    const int64_t B = x.size(0), T = x.size(1);
    auto h = norm_->forward(x);
    auto zxbc = in_proj_(h);  // [B, T, Din + Dxbc]
    auto z = zxbc.narrow(-1, 0, Din_), xBC = zxbc.narrow(-1, Din_, Dxbc_);
    auto dt_raw = dt_proj_(h);  // [B, T, H]
    // Left padding: a padding token's conv input is zeroed (as the conv's zero history) and its dt
    // too (no decay, no input), so it leaves the state exactly as if it were absent.
    auto keep = ctx.new_token_keep(T, x.device(), x.scalar_type());  // [B, T, 1] or undefined
    if (keep.defined()) xBC = xBC * keep;
    const bool cached = !state.empty() && ctx.mode != Mode::Train;
    at::Tensor new_history;
    xBC = at::silu(causal_depthwise_conv1d(xBC, conv_weight_, conv_bias_,
                                           cached ? state.tensors.at("conv_state") : at::Tensor(),
                                           cached ? &new_history : nullptr));  // [B, T, Dxbc]
    auto dt = at::softplus(dt_raw.to(at::kFloat) + dt_bias_);                  // [B, T, H] > 0, fp32
    if (keep.defined()) dt = dt * keep.to(at::kFloat);
    auto v = xBC.narrow(-1, 0, Din_).reshape({B, T, H_, P_}).transpose(1, 2);  // [B, H, T, P]
    at::Tensor S = cached ? state.tensors.at("ssm_state") : at::Tensor();      // [B, H, N, P] fp32
    at::Tensor y;                                                              // [B, H, T, P]
    if (ctx.mode != Mode::Decode && !recurrent_ && xBC.scalar_type() == at::kBFloat16 && ssd_kernel_enabled() &&
        mamba2::ssd_cuda_applies(xBC, N_, P_)) {
      // CUDA under bf16 (autocast training, prefill): the SSD chunk kernels (ssd_chunk.cu), B and C per
      // group, never expanded per head; chunks of 64 whatever chunk_size. Not for fp32, whose tensor-op
      // path stays exact (the kernels round their matmul operands to bf16). NOT YET RUN ON A GPU: verified
      // in the CPU emulator (emu/run.sh) only, so behind LINEARNEXUS_SSD_KERNEL=1 (off by default) until
      // test_ssd_chunk_gpu, which checks it against the path below, has passed on one.
      auto bc = [&](int64_t off) { return xBC.narrow(-1, off, G_ * N_).reshape({B, T, G_, N_}); };
      auto r = mamba2::ssd_chunk_cuda(xBC.narrow(-1, 0, Din_).reshape({B, T, H_, P_}), dt, bc(Din_), bc(Din_ + G_ * N_),
                                      dt * (-A_log_.exp()), S);  // log-decays [B, T, H]
      y = r.y.transpose(1, 2);
      S = r.state;
    } else {
      auto group = [&](int64_t off) {  // [B, T, G N] -> [B, H, T, N], each group's B (or C) for its heads
        return xBC.narrow(-1, off, G_ * N_).reshape({B, T, G_, N_}).transpose(1, 2).repeat_interleave(H_ / G_, 1);
      };
      auto dth = dt.transpose(1, 2).unsqueeze(-1);            // [B, H, T, 1]
      auto k = group(Din_) * dth, q = group(Din_ + G_ * N_);  // [B, H, T, N]
      auto g = dth * (-A_log_.exp()).view({1, H_, 1, 1});     // [B, H, T, 1] log-decays
      y = ctx.mode == Mode::Decode || recurrent_ ? decay_scan_recurrent(q, k, v, g, S)
                                                 : decay_scan_chunked(q, k, v, g, S, Q_);
    }
    if (cached) {
      state.tensors["conv_state"] = new_history.detach();
      state.tensors["ssm_state"] = S.detach();
    }
    y = (y + v * D_.view({1, H_, 1, 1})).transpose(1, 2).reshape({B, T, Din_});
    auto out = out_proj_(gnorm_->forward(y * at::silu(z)));  // [B, T, C]
    if (is_training() && dropout_ > 0) out = at::dropout(out, dropout_, true);
    return {x + out, std::move(state)};
  }

  // Decoding reads positions and padding from the context only (no host-side step): capturable.
  bool graph_safe_decode() const override { return true; }

  LayerState init_state(int64_t B, int64_t, const at::TensorOptions& o) const override {
    LayerState s;  // fixed-size whatever max_len is
    s.tensors["conv_state"] = at::zeros({B, Dxbc_, K_ - 1}, o);
    s.tensors["ssm_state"] = at::zeros({B, H_, N_, P_}, o.dtype(at::kFloat));
    return s;
  }

  // in_proj stacks z, x, B and C.
  std::map<std::string, std::vector<int64_t>> fused_splits() const override {
    return {{"in_proj.weight", {Din_, Din_, G_ * N_, G_ * N_}}};
  }

  // The projections are matrices; dt_proj makes time steps (a decay), so it is `other`: never
  // orthogonalised by Muon, weight-decayed as a 2-D tensor; A_log, dt_bias and D are `ssm_dynamics`.
  std::map<std::string, ParamRole> parameter_roles() const override {
    std::map<std::string, ParamRole> r{{"norm.weight", ParamRole::Norm},      {"in_proj.weight", ParamRole::Matrix},
                                       {"dt_proj.weight", ParamRole::Other},  {"conv_weight", ParamRole::Conv},
                                       {"dt_bias", ParamRole::SsmDynamics},   {"A_log", ParamRole::SsmDynamics},
                                       {"D", ParamRole::SsmDynamics},         {"gnorm.weight", ParamRole::Norm},
                                       {"out_proj.weight", ParamRole::Matrix}};
    declare_roles(r, *norm_, "norm.", ParamRole::Norm);  // a LayerNorm's bias too (model.norm)
    if (conv_bias_.defined()) r["conv_bias"] = ParamRole::Bias;
    return r;
  }

 private:
  int64_t C_, N_, K_, Din_, P_, G_, Q_, H_ = 0, Dxbc_ = 0;
  bool recurrent_;
  double dropout_;
  std::shared_ptr<Norm> norm_;
  std::shared_ptr<RMSNorm> gnorm_;
  torch::nn::Linear in_proj_{nullptr}, dt_proj_{nullptr}, out_proj_{nullptr};
  at::Tensor conv_weight_, conv_bias_, dt_bias_, A_log_, D_;
};

}  // namespace

void register_mamba2(Registry& r) {
  r.add_block(
      "mamba2", "pre-norm Mamba-2 (SSD) block: conv + scalar-decay-per-head SSM, gated; chunked + recurrent",
      {
          {"d_state", ParamType::Int, "64", "SSM state size N per head", {}, 1},
          {"d_conv", ParamType::Int, "4", "causal depthwise conv width", {}, 2},
          {"expand", ParamType::Int, "2", "inner width d_inner = expand * hidden_size", {}, 1},
          {"head_dim", ParamType::Int, "64", "channels P per head; n_head = d_inner / head_dim", {}, 1},
          {"n_groups", ParamType::Int, "1", "groups of heads sharing B and C (must divide n_head)", {}, 1},
          {"dt_min", ParamType::Float, "0.001", "smallest initial dt", {}, 1e-6, 10},
          {"dt_max", ParamType::Float, "0.1", "largest initial dt", {}, 1e-6, 10},
          {"dt_init_floor", ParamType::Float, "1e-4", "floor of the initial dt", {}, 0},
          {"conv_bias", ParamType::Bool, "true", "bias in the conv"},
          chunk_size_spec("64", 1024),
          scan_spec(),
      },
      [](const ModelDims& d, const Params& p, int64_t) { return std::make_shared<Mamba2Block>(d, p); },
      BlockHooks{{}, mamba2_hf_adapter()});
}

}  // namespace linearnexus

LINEARNEXUS_PLUGIN("mamba2", "1.0.0", "Mamba-2 (SSD) block with the chunked matmul form and the recurrence",
                   linearnexus::register_mamba2)
