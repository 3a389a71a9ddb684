// The `mamba` block: a pre-norm residual Mamba-1 selective state-space block (Gu & Dao, 2023).
//
//   h = norm(x);  (xi, z) = in_proj(h)                          one fused projection, two halves
//   u = silu(causal_depthwise_conv1d(xi))                        d_conv taps over time
//   (dt, B, C) = x_proj(u);  delta = softplus(dt_proj(dt))      input-dependent ("selective")
//   s_t = exp(delta_t A) s_{t-1} + delta_t B_t u_t;  y_t = C_t s_t + D u_t     A = -exp(A_log)
//   x = x + out_proj(y * silu(z))
//
// The state per layer is {"conv_state" [B, d_inner, d_conv - 1] (the last inputs of the conv),
// "ssm_state" [B, d_inner, d_state]}. Three scans compute the same recurrence:
//   recurrent   one token on the state (decoding);
//   chunk       the training / prefill path: chunks of chunk_size tokens, each a handful of batched
//               ops on segment sums of cumulative log-decays, the state carried across chunks;
//   sequential  a plain loop over time steps, the reference the tests compare against.
#include <linearnexus/error.h>
#include <linearnexus/layers.h>
#include <linearnexus/model.h>
#include <linearnexus/plugin.h>

#include <torch/autograd.h>

#include <cmath>

namespace linearnexus {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// ---- the scans ----------------------------------------------------------------------------------
// Shapes: u, delta [B, T, D] (D = d_inner); A [D, N] (negative); Bm, Cm [B, T, N]; s0 [B, D, N].
// They return y [B, T, D] without the D-skip, and the state after the last token.

struct ScanResult {
  at::Tensor y, state;
};

// The linear recurrence h_t = exp(la_t) h_{t-1} + b_t for every t at once, chunk by chunk
// (reverse: h_t = exp(la_t) h_{t+1} + b_t, from the end). la [B, T, F] (log-decays, <= 0),
// b [B, T, F], h0 [B, F] (the state before the first step) -> h [B, T, F].
//  1. every chunk from a zero state, all chunks together: Q steps of batched ops on [B, nC, F]
//     (Q launches, not T), accumulating S, the cumulative log-decay from the chunk's start;
//  2. the state entering chunk c+1 is exp(S_end(c)) * (state entering c) + chunk c's own end state
//     (nC small steps);
//  3. h += exp(S_t) * (state entering t's chunk).
// Only S (<= 0) is exponentiated, never -S (a positive cumulative sum, which overflows after a few
// dozen tokens of strong decay).
// Why not a parallel form inside the chunk: Mamba-1's decay differs per (channel, state), so the
// pairwise (SSD-style) form costs Q times the work of the recurrence and a doubling scan log2(Q)
// times; on a CPU that extra memory traffic costs more than the launches it saves (a doubling scan
// measured ~5x slower than this). This form does the recurrence's work in ~2Q + nC launches.
at::Tensor linear_scan(const at::Tensor& la_in, const at::Tensor& b_in, const at::Tensor& h0, int64_t Q, bool reverse) {
  const int64_t B = la_in.size(0), T = la_in.size(1), F = la_in.size(2);
  Q = std::min(Q, T);
  const int64_t nC = (T + Q - 1) / Q, pad = nC * Q - T;
  // Padding steps (after the end, or before the start in reverse) have log-decay 0 and no input:
  // they leave the state as it is.
  const std::vector<int64_t> padding = reverse ? std::vector<int64_t>{0, 0, pad, 0} : std::vector<int64_t>{0, 0, 0, pad};
  auto la = (pad ? at::constant_pad_nd(la_in, padding) : la_in).contiguous().view({B, nC, Q, F});
  auto b = (pad ? at::constant_pad_nd(b_in, padding) : b_in).contiguous().view({B, nC, Q, F});
  auto a = la.exp();                                   // per-step decays in (0, 1]
  auto h = at::empty(b.sizes(), b.options()), S = at::empty(b.sizes(), b.options());  // [B, nC, Q, F]
  const int64_t first = reverse ? Q - 1 : 0, step = reverse ? -1 : 1, last = reverse ? 0 : Q - 1;
  h.select(2, first).copy_(b.select(2, first));
  S.select(2, first).copy_(la.select(2, first));
  for (int64_t q = first + step; q >= 0 && q < Q; q += step) {
    // (Strided adds: ATen's cumsum over a middle dimension is several times slower.)
    auto hq = h.select(2, q), Sq = S.select(2, q);
    at::addcmul_out(hq, b.select(2, q), a.select(2, q), h.select(2, q - step));
    at::add_out(Sq, S.select(2, q - step), la.select(2, q));
  }
  S.exp_();                                            // decay from the chunk's start, in (0, 1]
  auto enter = at::empty({B, nC, F}, b.options());     // the state entering each chunk
  const int64_t c0 = reverse ? nC - 1 : 0;
  enter.select(1, c0).copy_(h0);
  for (int64_t c = c0 + step; c >= 0 && c < nC; c += step) {
    auto out = enter.select(1, c);
    at::addcmul_out(out, h.select(1, c - step).select(1, last), S.select(1, c - step).select(1, last), enter.select(1, c - step));
  }
  h.addcmul_(S, enter.unsqueeze(2));
  return h.view({B, nC * Q, F}).narrow(1, reverse ? pad : 0, T);
}

// The selective scan as one autograd node with its gradient written out (autograd would record
// ~2Q + nC nodes and keep their [B, T, N, D] inputs alive). The backward is the same linear
// recurrence run backwards in time (linear_scan again):
//   g_t = dL/dh_t (from y_t = C_t h_t, and from the final state) + exp(la_{t+1}) g_{t+1}
//   dL/db_t = g_t;  dL/dla_t = g_t * h_{t-1} * exp(la_t).
// Inside, states are [B, T, N, D] (not [.., D, N]): with d_inner innermost every broadcast and
// reduction runs along a long contiguous row; with N = 16 innermost they ran ~20x slower on CPU.
struct ChunkScanFunction : public torch::autograd::Function<ChunkScanFunction> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                               const at::Tensor& Bm, const at::Tensor& Cm, const at::Tensor& s0, int64_t Q) {
    // u, delta: [B, T, D]; A: [D, N]; Bm, Cm: [B, T, N]; s0: [B, D, N]
    const int64_t B = u.size(0), T = u.size(1), D = u.size(2), N = A.size(1);
    auto At = A.t().contiguous();                                         // [N, D]
    auto la = delta.unsqueeze(2) * At;                                     // [B, T, N, D]
    auto b = Bm.unsqueeze(-1) * (delta * u).unsqueeze(2);                 // [B, T, N, D]
    auto h = linear_scan(la.view({B, T, N * D}), b.view({B, T, N * D}), s0.transpose(1, 2).reshape({B, N * D}), Q, false)
                 .view({B, T, N, D});
    auto y = (h * Cm.unsqueeze(-1)).sum(2);                               // [B, T, D]
    ctx->save_for_backward({u, delta, At, Bm, Cm, s0, h});
    ctx->saved_data["Q"] = Q;
    return {y, h.select(1, T - 1).transpose(1, 2).contiguous()};         // [B, D, N]
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto v = ctx->get_saved_variables();
    const auto &u = v[0], &delta = v[1], &At = v[2], &Bm = v[3], &Cm = v[4], &s0 = v[5], &h = v[6];
    const int64_t Q = ctx->saved_data["Q"].toInt(), B = u.size(0), T = u.size(1), D = u.size(2), N = At.size(0);
    auto gy = grads[0].defined() ? grads[0] : at::zeros_like(u);
    auto gT = grads[1].defined() ? grads[1].transpose(1, 2) : at::zeros({B, N, D}, u.options());  // [B, N, D]
    auto la = delta.unsqueeze(2) * At;                                     // [B, T, N, D]
    // Backwards in time g is a linear recurrence whose step t decays by exp(la_{t+1}) (by 1 at T-1,
    // where gT enters as the initial state).
    auto la_next = at::cat({la.narrow(1, 1, T - 1), at::zeros_like(la.narrow(1, 0, 1))}, 1);
    auto direct = Cm.unsqueeze(-1) * gy.unsqueeze(2);                      // [B, T, N, D]
    auto g = linear_scan(la_next.view({B, T, N * D}), direct.view({B, T, N * D}), gT.reshape({B, N * D}), Q, true)
                 .view({B, T, N, D});
    la_next = direct = at::Tensor();
    auto h_prev = at::cat({s0.transpose(1, 2).unsqueeze(1), h.narrow(1, 0, T - 1)}, 1);
    auto a = la.exp_();
    auto gla = g * h_prev * a;                                             // [B, T, N, D]
    auto gs0 = (a.select(1, 0) * g.select(1, 0)).transpose(1, 2);          // [B, D, N]
    auto gdu = (g * Bm.unsqueeze(-1)).sum(2);                              // dL/d(delta u): [B, T, D]
    auto gu = gdu * delta;
    auto gdelta = gdu * u + (gla * At).sum(2);
    auto gA = (gla * delta.unsqueeze(2)).sum(at::IntArrayRef{0, 1}).t();  // [D, N]
    auto gB = (g * (delta * u).unsqueeze(2)).sum(-1);                      // [B, T, N]
    auto gC = (h * gy.unsqueeze(2)).sum(-1);                               // [B, T, N]
    return {gu, gdelta, gA, gB, gC, gs0, at::Tensor()};
  }
};

ScanResult scan_chunk(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& Bm,
                      const at::Tensor& Cm, const at::Tensor& s0, int64_t chunk_size) {
  auto out = ChunkScanFunction::apply(u, delta, A, Bm, Cm, s0, chunk_size);
  return {out[0], out[1]};
}

// The reference: one time step after another, exactly the recurrence. Tests only (and the
// benchmark): T steps of small ops, and autograd records every one of them.
ScanResult scan_sequential(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& Bm,
                           const at::Tensor& Cm, const at::Tensor& s0) {
  // unbind, not select: select's backward would allocate a full [B, T, ...] gradient per step.
  auto us = u.unbind(1), ds = delta.unbind(1), bs = Bm.unbind(1), cs = Cm.unbind(1);
  at::Tensor s = s0;
  std::vector<at::Tensor> ys;
  for (size_t t = 0; t < us.size(); ++t) {
    auto dt = ds[t].unsqueeze(-1);                                       // [B, D, 1]
    s = (dt * A).exp() * s + (dt * us[t].unsqueeze(-1)) * bs[t].unsqueeze(1);  // [B, D, N]
    ys.push_back(at::matmul(s, cs[t].unsqueeze(-1)).squeeze(-1));        // [B, D]
  }
  return {at::stack(ys, 1), s};
}

// ---- the block ----------------------------------------------------------------------------------

class MambaBlock : public Block {
 public:
  MambaBlock(const ModelDims& d, const Params& p)
      : C_(d.hidden_size), N_(p.get_int("d_state")), K_(p.get_int("d_conv")), Din_(p.get_int("expand") * C_),
        chunk_(p.get_int("chunk_size")), sequential_(p.get_string("scan") == "sequential"), dropout_(d.dropout) {
    const std::string& r = p.get_string("dt_rank");
    if (r == "auto") {
      R_ = (C_ + 15) / 16;  // ceil(C / 16)
    } else {
      char* end = nullptr;
      R_ = std::strtoll(r.c_str(), &end, 10);
      if (*end || R_ <= 0) throw Error("model.blocks.mamba.dt_rank must be a positive integer or auto (got '" + r + "')");
    }
    if (N_ <= 0 || K_ < 1 || Din_ <= 0 || chunk_ <= 0)
      throw Error("model.blocks.mamba: d_state, d_conv, expand and chunk_size must be positive");
    const bool bias = p.get_bool("bias");
    norm_ = register_module("norm", std::make_shared<RMSNorm>(C_));
    in_proj_ = register_module("in_proj", torch::nn::Linear(torch::nn::LinearOptions(C_, 2 * Din_).bias(bias)));
    conv_weight_ = register_parameter("conv_weight", torch::empty({Din_, K_}));
    if (p.get_bool("conv_bias")) conv_bias_ = register_parameter("conv_bias", torch::empty({Din_}));
    x_proj_ = register_module("x_proj", torch::nn::Linear(torch::nn::LinearOptions(Din_, R_ + 2 * N_).bias(false)));
    dt_proj_ = register_module("dt_proj", torch::nn::Linear(torch::nn::LinearOptions(R_, Din_).bias(true)));
    A_log_ = register_parameter("A_log", torch::empty({Din_, N_}));
    D_ = register_parameter("D", torch::empty({Din_}));
    out_proj_ = register_module("out_proj", torch::nn::Linear(torch::nn::LinearOptions(Din_, C_).bias(bias)));

    torch::NoGradGuard g;
    init_linear(in_proj_);
    init_residual_projection(out_proj_, d.n_layer);
    // The conv as PyTorch's Conv1d initialises it: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = d_conv.
    const double cb = 1.0 / std::sqrt(static_cast<double>(K_));
    conv_weight_.uniform_(-cb, cb);
    if (conv_bias_.defined()) conv_bias_.uniform_(-cb, cb);
    // dt_proj: weights so dt starts at the scale of its rank; the bias is softplus^-1 of a dt drawn
    // log-uniformly in [dt_min, dt_max] (floored), so each channel starts with its own time scale.
    const double dt_std = 1.0 / std::sqrt(static_cast<double>(R_));
    dt_proj_->weight.uniform_(-dt_std, dt_std);
    const double lo = std::log(p.get_float("dt_min")), hi = std::log(p.get_float("dt_max"));
    auto dt = (torch::rand({Din_}) * (hi - lo) + lo).exp().clamp_min(p.get_float("dt_init_floor"));
    dt_proj_->bias.copy_(dt + at::log(-at::expm1(-dt)));  // softplus^-1(dt) = dt + log(1 - exp(-dt))
    // S4D-real: A[:, n] = -(n + 1) for every channel.
    A_log_.copy_(at::arange(1, N_ + 1, at::kFloat).log().unsqueeze(0).expand({Din_, N_}));
    D_.fill_(1.0);
  }

  BlockOutput forward(const at::Tensor& x, LayerState state, const ForwardContext& ctx) override {
    // x: [B, T, C] -> [B, T, C]
    const int64_t T = x.size(1);
    auto xz = in_proj_(norm_->forward(x));               // [B, T, 2 D]
    auto xi = xz.narrow(-1, 0, Din_), z = xz.narrow(-1, Din_, Din_);  // [B, T, D] each
    // Left padding (batched generation): a padding token must leave the state exactly as a zero
    // state, so its conv input is zeroed (like the conv's zero history) and its delta too (no decay,
    // no input).
    at::Tensor keep;
    if (ctx.key_padding.defined()) keep = ctx.key_padding.narrow(1, ctx.start, T).to(x.device()).unsqueeze(-1).to(x.scalar_type());
    if (keep.defined()) xi = xi * keep;
    const bool cached = !state.empty() && ctx.mode != Mode::Train;
    at::Tensor y;
    if (cached && ctx.mode == Mode::Decode) {
      // The recurrent path, one token after the other on the cached state.
      std::vector<at::Tensor> ys;
      for (int64_t t = 0; t < T; ++t)
        ys.push_back(recurrent(xi.select(1, t), keep.defined() ? keep.select(1, t) : at::Tensor(), state));
      y = at::stack(ys, 1);                               // [B, T, D]
    } else {
      at::Tensor history, new_history;
      if (cached) history = state.tensors.at("conv_state");
      auto u = at::silu(causal_depthwise_conv1d(xi, conv_weight_, conv_bias_, history, cached ? &new_history : nullptr));
      auto [delta, Bm, Cm] = selective_params(u, keep);  // [B, T, D], [B, T, N], [B, T, N]
      auto A = -A_log_.exp();                             // [D, N]
      auto s0 = cached ? state.tensors.at("ssm_state") : at::zeros({x.size(0), Din_, N_}, u.options());
      auto r = sequential_ ? scan_sequential(u, delta, A, Bm, Cm, s0) : scan_chunk(u, delta, A, Bm, Cm, s0, chunk_);
      y = r.y + u * D_;                                   // [B, T, D]
      if (cached) {
        state.tensors["conv_state"] = new_history.detach();
        state.tensors["ssm_state"] = r.state.detach();
      }
    }
    auto out = out_proj_(y * at::silu(z));                // [B, T, C]
    if (is_training() && dropout_ > 0) out = at::dropout(out, dropout_, true);
    return {x + out, std::move(state)};
  }

  LayerState init_state(int64_t B, int64_t max_len, const at::TensorOptions& o) const override {
    LayerState s;
    s.tensors["conv_state"] = at::zeros({B, Din_, K_ - 1}, o);
    s.tensors["ssm_state"] = at::zeros({B, Din_, N_}, o);
    return s;
  }

  // in_proj stacks the x and z projections; x_proj stacks dt, B and C.
  std::map<std::string, std::vector<int64_t>> fused_splits() const override {
    return {{"in_proj.weight", {Din_, Din_}}, {"x_proj.weight", {R_, N_, N_}}};
  }

 private:
  // u [B, T, D] -> delta [B, T, D] (> 0), B and C [B, T, N]: what makes the SSM selective.
  std::tuple<at::Tensor, at::Tensor, at::Tensor> selective_params(const at::Tensor& u, const at::Tensor& keep) {
    auto dbc = x_proj_(u);                                // [B, T, R + 2 N]
    auto delta = at::softplus(dt_proj_(dbc.narrow(-1, 0, R_)));
    if (keep.defined()) delta = delta * keep;
    return {delta, dbc.narrow(-1, R_, N_), dbc.narrow(-1, R_ + N_, N_)};
  }

  // One token: xi [B, D] (the conv's input) on the state {conv_state [B, D, K-1], ssm_state
  // [B, D, N]}, updated in place of the map; returns y [B, D] (with the D skip, before the gate).
  at::Tensor recurrent(const at::Tensor& xi, const at::Tensor& keep, LayerState& state) {
    auto& conv = state.tensors.at("conv_state");
    auto& s = state.tensors.at("ssm_state");
    auto window = at::cat({conv.to(xi.scalar_type()), xi.unsqueeze(-1)}, -1);  // [B, D, K]
    auto xc = (window * conv_weight_).sum(-1);            // [B, D]
    if (conv_bias_.defined()) xc = xc + conv_bias_;
    auto u = at::silu(xc);
    auto [delta, Bm, Cm] = selective_params(u.unsqueeze(1), keep.defined() ? keep.unsqueeze(1) : keep);
    auto dt = delta.squeeze(1).unsqueeze(-1);             // [B, D, 1]
    auto A = -A_log_.exp();                               // [D, N]
    auto s_new = (dt * A).exp() * s + (dt * u.unsqueeze(-1)) * Bm.squeeze(1).unsqueeze(1);  // [B, D, N]
    auto y = at::matmul(s_new, Cm.squeeze(1).unsqueeze(-1)).squeeze(-1) + u * D_;          // [B, D]
    conv = window.narrow(-1, 1, K_ - 1).detach();
    s = s_new.detach();
    return y;
  }

  int64_t C_, N_, K_, Din_, R_ = 0, chunk_;
  bool sequential_;
  double dropout_;
  std::shared_ptr<RMSNorm> norm_;
  torch::nn::Linear in_proj_{nullptr}, x_proj_{nullptr}, dt_proj_{nullptr}, out_proj_{nullptr};
  at::Tensor conv_weight_, conv_bias_, A_log_, D_;
};

void register_mamba(Registry& r) {
  r.add_block("mamba", "pre-norm Mamba-1 selective state-space block (conv + selective scan, gated)",
              {
                  {"d_state", ParamType::Int, "16", "SSM state size N per channel"},
                  {"d_conv", ParamType::Int, "4", "causal depthwise conv width"},
                  {"expand", ParamType::Int, "2", "inner width d_inner = expand * hidden_size"},
                  {"dt_rank", ParamType::String, "auto", "rank of the delta projection (auto = ceil(hidden_size / 16))"},
                  {"dt_min", ParamType::Float, "0.001", "smallest initial delta"},
                  {"dt_max", ParamType::Float, "0.1", "largest initial delta"},
                  {"dt_init_floor", ParamType::Float, "1e-4", "floor of the initial delta"},
                  {"conv_bias", ParamType::Bool, "true", "bias in the conv"},
                  {"bias", ParamType::Bool, "false", "biases in in_proj and out_proj"},
                  {"chunk_size", ParamType::Int, "64", "tokens per chunk of the parallel scan"},
                  {"scan", ParamType::String, "chunk", "training/prefill scan: chunk, or the slow sequential reference (tests, benchmarks)",
                   {"chunk", "sequential"}},
              },
              [](const ModelDims& d, const Params& p, int64_t) { return std::make_shared<MambaBlock>(d, p); });
}

}  // namespace
}  // namespace linearnexus

LINEARNEXUS_PLUGIN("mamba", "1.0.0", "Mamba-1 selective state-space block with chunked, recurrent and reference scans",
                   linearnexus::register_mamba)
