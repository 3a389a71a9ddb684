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
//   chunk       the training / prefill path: chunks of chunk_size tokens, each batched ops on
//               [B, chunk, N, D] with cumulative log-decays, the state carried across chunks, and a
//               hand-written backward that recomputes one chunk at a time;
//   sequential  a plain loop over time steps, the reference the tests compare against.
#include <linearnexus/error.h>
#include <linearnexus/layers.h>
#include <linearnexus/model.h>
#include <linearnexus/plugin.h>

#include <torch/autograd.h>

#include <algorithm>
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

// One chunk of the linear recurrence h_t = exp(la_t) h_{t-1} + b_t (reverse: h_t = exp(la_t) h_{t+1}
// + b_t, from the end), entering with state h0. la [B, Q, F] (log-decays, <= 0), b [B, Q, F],
// h0 [B, F] -> h [B, Q, F]:
//   h = (the chunk's own part, from a zero state) + exp(S_t) * h0,
// with S the cumulative log-decay from the chunk's start. Only S (<= 0) is exponentiated, never -S
// (a positive cumulative sum, which overflows after a few dozen tokens of strong decay). The zero-
// state part does not depend on h0, which is what lets chunks run side by side on a parallel device.
// Inside the chunk it is Q steps of batched ops on [B, F], not a parallel form: Mamba-1's decay
// differs per (channel, state), so the pairwise (SSD-style) form costs Q times the recurrence's
// work and a doubling scan log2(Q) times; on this CPU a doubling scan measured 4-8x slower than
// the sequential reference, this form about as fast (docs/benchmarks.md).
at::Tensor scan_in_chunk(const at::Tensor& la_in, const at::Tensor& b_in, const at::Tensor& h0, bool reverse) {
  auto la = la_in.contiguous(), b = b_in.contiguous();
  const int64_t Q = la.size(1);
  auto a = la.exp();                                   // per-step decays in (0, 1]
  auto h = at::empty(b.sizes(), b.options()), S = at::empty(b.sizes(), b.options());  // [B, Q, F]
  const int64_t first = reverse ? Q - 1 : 0, step = reverse ? -1 : 1;
  h.select(1, first).copy_(b.select(1, first));
  S.select(1, first).copy_(la.select(1, first));
  for (int64_t q = first + step; q >= 0 && q < Q; q += step) {
    // (Strided adds: ATen's cumsum over a middle dimension is several times slower.)
    auto hq = h.select(1, q), Sq = S.select(1, q);
    at::addcmul_out(hq, b.select(1, q), a.select(1, q), h.select(1, q - step));
    at::add_out(Sq, S.select(1, q - step), la.select(1, q));
  }
  return h.addcmul_(S.exp_(), h0.unsqueeze(1));       // exp(S) in (0, 1]: the decay from the chunk's start
}

// The selective scan as one autograd node with its gradient written out. Chunks run one after the
// other, carrying the state; each chunk is a handful of batched ops on [B, Q, N, D] plus its Q-step
// scan_in_chunk. Only the states entering the chunks are kept: backward recomputes one chunk at a
// time, newest first (autograd would keep ~2Q nodes' [B, T, N, D] inputs: gigabytes at B=8,
// T=1024, D=512, N=16, and on a CPU the page faults of such tensors cost more than the arithmetic).
// The backward is the same linear recurrence run backwards in time (scan_in_chunk again):
//   g_t = dL/dh_t (from y_t = C_t h_t, and from the state after the chunk) + exp(la_{t+1}) g_{t+1}
//   dL/db_t = g_t;  dL/dla_t = g_t * h_{t-1} * exp(la_t).
// Inside, states are [B, T, N, D] (not [.., D, N]): with d_inner innermost every broadcast and
// reduction runs along a long contiguous row; with N = 16 innermost they ran ~20x slower on CPU.
struct ChunkScanFunction : public torch::autograd::Function<ChunkScanFunction> {
  // One chunk from state s [B, N, D]: la, b and h [B, Q, N, D].
  static std::tuple<at::Tensor, at::Tensor, at::Tensor> chunk(const at::Tensor& u, const at::Tensor& delta,
                                                              const at::Tensor& At, const at::Tensor& Bm, const at::Tensor& s) {
    const int64_t B = u.size(0), Q = u.size(1), N = At.size(0), D = At.size(1);
    auto la = delta.unsqueeze(2) * At;                                     // [B, Q, N, D]
    auto b = Bm.unsqueeze(-1) * (delta * u).unsqueeze(2);                 // [B, Q, N, D]
    auto h = scan_in_chunk(la.view({B, Q, N * D}), b.view({B, Q, N * D}), s.reshape({B, N * D}), false).view({B, Q, N, D});
    return {la, b, h};
  }

  static variable_list forward(AutogradContext* ctx, const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                               const at::Tensor& Bm, const at::Tensor& Cm, const at::Tensor& s0, int64_t Q) {
    // u, delta: [B, T, D]; A: [D, N]; Bm, Cm: [B, T, N]; s0: [B, D, N]
    const int64_t T = u.size(1);
    auto At = A.t().contiguous();                                          // [N, D]
    at::Tensor s = s0.transpose(1, 2).contiguous();                        // [B, N, D]
    std::vector<at::Tensor> ys, entering;
    for (int64_t t0 = 0; t0 < T; t0 += Q) {
      const int64_t n = std::min(Q, T - t0);
      entering.push_back(s);
      auto h = std::get<2>(chunk(u.narrow(1, t0, n), delta.narrow(1, t0, n), At, Bm.narrow(1, t0, n), s));
      ys.push_back((h * Cm.narrow(1, t0, n).unsqueeze(-1)).sum(2));      // [B, n, D]
      s = h.select(1, n - 1).contiguous();
    }
    ctx->save_for_backward({u, delta, At, Bm, Cm, at::stack(entering)});
    ctx->saved_data["Q"] = Q;
    return {at::cat(ys, 1), s.transpose(1, 2).contiguous()};               // y [B, T, D], state [B, D, N]
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto v = ctx->get_saved_variables();
    const auto &u = v[0], &delta = v[1], &At = v[2], &Bm = v[3], &Cm = v[4], &entering = v[5];
    const int64_t Q = ctx->saved_data["Q"].toInt(), B = u.size(0), T = u.size(1), N = At.size(0), D = At.size(1);
    auto gy_all = grads[0].defined() ? grads[0] : at::zeros_like(u);
    // dL/d(state after the current chunk) [B, N, D]
    at::Tensor gs = grads[1].defined() ? grads[1].transpose(1, 2).contiguous() : at::zeros({B, N, D}, u.options());
    std::vector<at::Tensor> gu, gdelta, gB, gC;
    auto gAt = at::zeros_like(At);
    for (int64_t c = entering.size(0) - 1; c >= 0; --c) {
      const int64_t t0 = c * Q, n = std::min(Q, T - t0);
      auto uc = u.narrow(1, t0, n), dc = delta.narrow(1, t0, n), Bc = Bm.narrow(1, t0, n), Cc = Cm.narrow(1, t0, n);
      auto gy = gy_all.narrow(1, t0, n);
      auto [la, b, h] = chunk(uc, dc, At, Bc, entering[c]);
      // Backwards in time g is a linear recurrence whose step t decays by exp(la_{t+1}) (by 1 at the
      // chunk's last step, where gs enters as the initial state).
      auto la_next = at::cat({la.narrow(1, 1, n - 1), at::zeros_like(la.narrow(1, 0, 1))}, 1);
      auto direct = Cc.unsqueeze(-1) * gy.unsqueeze(2);                    // [B, n, N, D]
      auto g = scan_in_chunk(la_next.view({B, n, N * D}), direct.view({B, n, N * D}), gs.reshape({B, N * D}), true)
                   .view({B, n, N, D});
      auto h_prev = at::cat({entering[c].unsqueeze(1), h.narrow(1, 0, n - 1)}, 1);
      auto a = la.exp_();
      auto gla = g * h_prev * a;                                           // [B, n, N, D]
      gs = a.select(1, 0) * g.select(1, 0);                                // into the state entering the chunk
      auto gdu = (g * Bc.unsqueeze(-1)).sum(2);                            // dL/d(delta u): [B, n, D]
      gu.push_back(gdu * dc);
      gdelta.push_back(gdu * uc + (gla * At).sum(2));
      gAt += (gla * dc.unsqueeze(2)).sum(at::IntArrayRef{0, 1});
      gB.push_back((g * (dc * uc).unsqueeze(2)).sum(-1));                  // [B, n, N]
      gC.push_back((h * gy.unsqueeze(2)).sum(-1));                         // [B, n, N]
    }
    auto cat_reversed = [](std::vector<at::Tensor>& x) {
      std::reverse(x.begin(), x.end());
      return at::cat(x, 1);
    };
    return {cat_reversed(gu), cat_reversed(gdelta), gAt.t(), cat_reversed(gB), cat_reversed(gC),
            gs.transpose(1, 2), at::Tensor()};
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
      // The scan runs in fp32 whatever the compute dtype (delta is fp32 under autocast, and a state
      // summed over a thousand steps would lose too much in bf16).
      auto s0 = cached ? state.tensors.at("ssm_state") : at::zeros({x.size(0), Din_, N_}, u.options().dtype(at::kFloat));
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
    // The SSM state accumulates over the whole sequence: fp32 whatever the compute dtype.
    s.tensors["ssm_state"] = at::zeros({B, Din_, N_}, o.dtype(at::kFloat));
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
                  {"chunk_size", ParamType::Int, "16", "tokens per chunk of the chunked scan (state carried across chunks)"},
                  {"scan", ParamType::String, "chunk", "training/prefill scan: chunk, or the slow sequential reference (tests, benchmarks)",
                   {"chunk", "sequential"}},
              },
              [](const ModelDims& d, const Params& p, int64_t) { return std::make_shared<MambaBlock>(d, p); });
}

}  // namespace
}  // namespace linearnexus

LINEARNEXUS_PLUGIN("mamba", "1.0.0", "Mamba-1 selective state-space block with chunked, recurrent and reference scans",
                   linearnexus::register_mamba)
