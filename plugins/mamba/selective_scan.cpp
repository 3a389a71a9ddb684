// The selective scan's CPU paths and the reference (declared in selective_scan.h): the chunked scan
// (batched tensor ops per chunk, any device), the fused CPU kernel, and the sequential reference.
#include "selective_scan.h"

#include <torch/autograd.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>

namespace linearnexus {
namespace mamba {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

namespace {

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
  auto a = la.exp();                                                                  // per-step decays in (0, 1]
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
  return h.addcmul_(S.exp_(), h0.unsqueeze(1));  // exp(S) in (0, 1]: the decay from the chunk's start
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
                                                              const at::Tensor& At, const at::Tensor& Bm,
                                                              const at::Tensor& s) {
    const int64_t B = u.size(0), Q = u.size(1), N = At.size(0), D = At.size(1);
    auto la = delta.unsqueeze(2) * At;                     // [B, Q, N, D]
    auto b = Bm.unsqueeze(-1) * (delta * u).unsqueeze(2);  // [B, Q, N, D]
    auto h =
        scan_in_chunk(la.view({B, Q, N * D}), b.view({B, Q, N * D}), s.reshape({B, N * D}), false).view({B, Q, N, D});
    return {la, b, h};
  }

  static variable_list forward(AutogradContext* ctx, const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                               const at::Tensor& Bm, const at::Tensor& Cm, const at::Tensor& s0, int64_t Q) {
    // u, delta: [B, T, D]; A: [D, N]; Bm, Cm: [B, T, N]; s0: [B, D, N]
    const int64_t T = u.size(1);
    auto At = A.t().contiguous();                    // [N, D]
    at::Tensor s = s0.transpose(1, 2).contiguous();  // [B, N, D]
    std::vector<at::Tensor> ys, entering;
    for (int64_t t0 = 0; t0 < T; t0 += Q) {
      const int64_t n = std::min(Q, T - t0);
      entering.push_back(s);
      auto h = std::get<2>(chunk(u.narrow(1, t0, n), delta.narrow(1, t0, n), At, Bm.narrow(1, t0, n), s));
      ys.push_back((h * Cm.narrow(1, t0, n).unsqueeze(-1)).sum(2));  // [B, n, D]
      s = h.select(1, n - 1).contiguous();
    }
    ctx->save_for_backward({u, delta, At, Bm, Cm, at::stack(entering)});
    ctx->saved_data["Q"] = Q;
    return {at::cat(ys, 1), s.transpose(1, 2).contiguous()};  // y [B, T, D], state [B, D, N]
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
      auto direct = Cc.unsqueeze(-1) * gy.unsqueeze(2);  // [B, n, N, D]
      auto g = scan_in_chunk(la_next.view({B, n, N * D}), direct.view({B, n, N * D}), gs.reshape({B, N * D}), true)
                   .view({B, n, N, D});
      auto h_prev = at::cat({entering[c].unsqueeze(1), h.narrow(1, 0, n - 1)}, 1);
      auto a = la.exp_();
      auto gla = g * h_prev * a;                 // [B, n, N, D]
      gs = a.select(1, 0) * g.select(1, 0);      // into the state entering the chunk
      auto gdu = (g * Bc.unsqueeze(-1)).sum(2);  // dL/d(delta u): [B, n, D]
      gu.push_back(gdu * dc);
      gdelta.push_back(gdu * uc + (gla * At).sum(2));
      gAt += (gla * dc.unsqueeze(2)).sum(at::IntArrayRef{0, 1});
      gB.push_back((g * (dc * uc).unsqueeze(2)).sum(-1));  // [B, n, N]
      gC.push_back((h * gy.unsqueeze(2)).sum(-1));         // [B, n, N]
    }
    auto cat_reversed = [](std::vector<at::Tensor>& x) {
      std::reverse(x.begin(), x.end());
      return at::cat(x, 1);
    };
    return {cat_reversed(gu), cat_reversed(gdelta), gAt.t(),     cat_reversed(gB),
            cat_reversed(gC), gs.transpose(1, 2),   at::Tensor()};
  }
};

}  // namespace

ScanResult scan_chunk(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& Bm,
                      const at::Tensor& Cm, const at::Tensor& s0, int64_t chunk_size) {
  auto out = ChunkScanFunction::apply(u, delta, A, Bm, Cm, s0, chunk_size);
  return {out[0], out[1]};
}

namespace {

// ---- the fused CPU scan -------------------------------------------------------------------------
// The CPU training path. Every batched-op form of Mamba-1's scan moves [B, T, N, D] tensors through
// memory several times per chunk (the decay differs per channel and state, so there is no matmul to
// hide it in); the recurrence itself is only ~5 flops per (t, d, n). Here one pass over time keeps a
// block of kFusedWidth channels' states [N, kFusedWidth] in cache, touching u, delta, B, C and y once
// per token, with the inner loop over contiguous channels so the compiler vectorises it (exp too:
// exp_neg is branch-free). Blocks of channels run in parallel (at::parallel_for over B x D/16).
// Backward recomputes the states of one chunk at a time from the states kept at chunk boundaries
// ([B, T/Q, N, D]), and runs the gradient recurrence backwards through it.
constexpr int64_t kFusedWidth = 16;

// exp(x) for the log-decays here (x <= 0), to 1e-7 relative: Cephes' expf written as straight-line
// integer and float arithmetic (no branch, no library call, no float comparison), so that GCC
// vectorises the loops around it without -ffast-math; std::exp is a library call per element.
inline float exp_neg(float x) {
  int32_t k = static_cast<int32_t>(x * 1.44269504f - 0.5f);  // round(x / ln 2) for x <= 0
  const int32_t keep = -static_cast<int32_t>(k >= -126);     // all ones unless exp(x) underflows
  k = k >= -126 ? k : -126;
  const float kf = static_cast<float>(k);
  const float r = x - kf * 0.693359375f + kf * 2.12194440e-4f;  // x - k ln 2, ln 2 split in two
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  int32_t bits = (k + 127) << 23;  // 2^k
  float e;
  std::memcpy(&e, &bits, sizeof e);
  e *= p;
  std::memcpy(&bits, &e, sizeof e);
  bits &= keep;  // 0 where it underflowed
  std::memcpy(&e, &bits, sizeof e);
  return e;
}

// Views of the scan's operands as raw fp32 rows. u, delta, y [B, T, D]; At [N, D]; Bm, Cm [B, T, N];
// states [B, N, D].
struct FusedScanArgs {
  const float *u, *delta, *At, *Bm, *Cm;
  int64_t B, T, D, N, Q;
  int64_t blocks() const { return (D + kFusedWidth - 1) / kFusedWidth; }
  int64_t chunks() const { return (T + Q - 1) / Q; }
};

// Forward from s0 [B, N, D]: y [B, T, D], the final state sT [B, N, D] and, when `kept` is not null,
// the state entering each chunk kept [B, T/Q, N, D].
void fused_scan_forward(const FusedScanArgs& a, const float* s0, float* y, float* sT, float* kept) {
  const int64_t N = a.N, D = a.D, T = a.T, nb = a.blocks(), W = kFusedWidth;
  at::parallel_for(0, a.B * nb, 1, [&](int64_t lo, int64_t hi) {
    std::vector<float> s(N * W);
    for (int64_t job = lo; job < hi; ++job) {
      const int64_t b = job / nb, d0 = (job % nb) * W, wn = std::min(W, D - d0);
      for (int64_t n = 0; n < N; ++n)
        for (int64_t w = 0; w < wn; ++w) s[n * W + w] = s0[(b * N + n) * D + d0 + w];
      for (int64_t t = 0; t < T; ++t) {
        if (kept && t % a.Q == 0)
          for (int64_t n = 0; n < N; ++n)
            for (int64_t w = 0; w < wn; ++w) kept[((b * a.chunks() + t / a.Q) * N + n) * D + d0 + w] = s[n * W + w];
        const int64_t row = (b * T + t) * D + d0;
        const float *ut = a.u + row, *dt = a.delta + row, *Bt = a.Bm + (b * T + t) * N, *Ct = a.Cm + (b * T + t) * N;
        float du[kFusedWidth], acc[kFusedWidth] = {};
        for (int64_t w = 0; w < wn; ++w) du[w] = dt[w] * ut[w];
        for (int64_t n = 0; n < N; ++n) {
          const float bn = Bt[n], cn = Ct[n], *An = a.At + n * D + d0;
          float* sn = s.data() + n * W;
          for (int64_t w = 0; w < wn; ++w) {
            const float v = exp_neg(dt[w] * An[w]) * sn[w] + du[w] * bn;
            sn[w] = v;
            acc[w] += cn * v;
          }
        }
        for (int64_t w = 0; w < wn; ++w) y[row + w] = acc[w];
      }
      for (int64_t n = 0; n < N; ++n)
        for (int64_t w = 0; w < wn; ++w) sT[(b * N + n) * D + d0 + w] = s[n * W + w];
    }
  });
}

// Backward. gy [B, T, D], gsT [B, N, D] in; gu, gdelta [B, T, D], gs0 [B, N, D], and per channel
// block partial sums gB, gC [blocks, B, T, N] and gA [B, N, D] (summed by the caller: each job
// writes only its own slices, so there are no races).
void fused_scan_backward(const FusedScanArgs& a, const float* kept, const float* gy, const float* gsT, float* gu,
                         float* gdelta, float* gs0, float* gB, float* gC, float* gA) {
  const int64_t N = a.N, D = a.D, T = a.T, Q = a.Q, nb = a.blocks(), W = kFusedWidth;
  at::parallel_for(0, a.B * nb, 1, [&](int64_t lo, int64_t hi) {
    // states[i] = the state before chunk step i (states[0] = kept), decay[i] = exp(delta A) of step i
    std::vector<float> states((Q + 1) * N * W), decay(Q * N * W), G(N * W), gAacc(N * W);
    for (int64_t job = lo; job < hi; ++job) {
      const int64_t b = job / nb, blk = job % nb, d0 = blk * W, wn = std::min(W, D - d0);
      for (int64_t n = 0; n < N; ++n)
        for (int64_t w = 0; w < wn; ++w) {
          G[n * W + w] = gsT[(b * N + n) * D + d0 + w];  // dL/d(state after the current step)
          gAacc[n * W + w] = 0;
        }
      for (int64_t c = a.chunks() - 1; c >= 0; --c) {
        const int64_t t0 = c * Q, len = std::min(Q, T - t0);
        for (int64_t n = 0; n < N; ++n)
          for (int64_t w = 0; w < wn; ++w) states[n * W + w] = kept[((b * a.chunks() + c) * N + n) * D + d0 + w];
        for (int64_t i = 0; i < len; ++i) {  // recompute the chunk's states
          const int64_t t = t0 + i, row = (b * T + t) * D + d0;
          const float *ut = a.u + row, *dt = a.delta + row, *Bt = a.Bm + (b * T + t) * N;
          for (int64_t n = 0; n < N; ++n) {
            const float bn = Bt[n], *An = a.At + n * D + d0;
            const float* prev = states.data() + (i * N + n) * W;
            float *next = states.data() + ((i + 1) * N + n) * W, *dec = decay.data() + (i * N + n) * W;
            for (int64_t w = 0; w < wn; ++w) {
              dec[w] = exp_neg(dt[w] * An[w]);
              next[w] = dec[w] * prev[w] + dt[w] * ut[w] * bn;
            }
          }
        }
        for (int64_t i = len - 1; i >= 0; --i) {  // the gradient recurrence, backwards in time
          const int64_t t = t0 + i, row = (b * T + t) * D + d0, nrow = ((blk * a.B + b) * T + t) * N;
          const float *ut = a.u + row, *dt = a.delta + row, *gyt = gy + row;
          const float *Bt = a.Bm + (b * T + t) * N, *Ct = a.Cm + (b * T + t) * N;
          float gdu[kFusedWidth] = {}, gdl[kFusedWidth] = {}, pb[kFusedWidth], pc[kFusedWidth];
          for (int64_t n = 0; n < N; ++n) {
            const float bn = Bt[n], cn = Ct[n], *An = a.At + n * D + d0;
            const float *prev = states.data() + (i * N + n) * W, *cur = states.data() + ((i + 1) * N + n) * W;
            const float* dec = decay.data() + (i * N + n) * W;
            float *g = G.data() + n * W, *gan = gAacc.data() + n * W;
            for (int64_t w = 0; w < wn; ++w) {
              const float gt = g[w] + cn * gyt[w];  // dL/ds_t
              pc[w] = cur[w] * gyt[w];
              pb[w] = gt * dt[w] * ut[w];
              gdu[w] += gt * bn;
              const float gla = gt * prev[w] * dec[w];  // dL/d(delta_t A)
              gdl[w] += gla * An[w];
              gan[w] += gla * dt[w];
              g[w] = dec[w] * gt;  // dL/ds_{t-1} through the decay
            }
            float sb = 0, sc = 0;
            for (int64_t w = 0; w < wn; ++w) sb += pb[w], sc += pc[w];
            gB[nrow + n] = sb;
            gC[nrow + n] = sc;
          }
          for (int64_t w = 0; w < wn; ++w) {
            gu[row + w] = gdu[w] * dt[w];
            gdelta[row + w] = gdu[w] * ut[w] + gdl[w];
          }
        }
      }
      for (int64_t n = 0; n < N; ++n)
        for (int64_t w = 0; w < wn; ++w) {
          gs0[(b * N + n) * D + d0 + w] = G[n * W + w];
          gA[(b * N + n) * D + d0 + w] = gAacc[n * W + w];
        }
    }
  });
}

struct FusedScanFunction : public torch::autograd::Function<FusedScanFunction> {
  static FusedScanArgs args(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& At, const at::Tensor& Bm,
                            const at::Tensor& Cm, int64_t Q) {
    return {u.data_ptr<float>(),
            delta.data_ptr<float>(),
            At.data_ptr<float>(),
            Bm.data_ptr<float>(),
            Cm.data_ptr<float>(),
            u.size(0),
            u.size(1),
            u.size(2),
            At.size(0),
            Q};
  }

  static variable_list forward(AutogradContext* ctx, const at::Tensor& u_in, const at::Tensor& delta_in,
                               const at::Tensor& A, const at::Tensor& Bm_in, const at::Tensor& Cm_in,
                               const at::Tensor& s0, int64_t Q) {
    // u, delta: [B, T, D]; A: [D, N]; Bm, Cm: [B, T, N]; s0: [B, D, N]
    auto u = u_in.contiguous(), delta = delta_in.contiguous(), Bm = Bm_in.contiguous(), Cm = Cm_in.contiguous();
    auto At = A.t().contiguous();  // [N, D]
    at::Tensor kept;
    auto out = run(u, delta, At, Bm, Cm, s0, Q, &kept);
    ctx->save_for_backward({u, delta, At, Bm, Cm, kept});
    ctx->saved_data["Q"] = Q;
    return out;
  }

  // The forward pass itself. u, delta: [B, T, D]; At: [N, D]; Bm, Cm: [B, T, N]; s0: [B, D, N] ->
  // {y [B, T, D], state [B, D, N]}, and into *kept the chunk-entry states backward needs (null: none).
  static variable_list run(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& At, const at::Tensor& Bm,
                           const at::Tensor& Cm, const at::Tensor& s0, int64_t Q, at::Tensor* kept) {
    auto s0t = s0.transpose(1, 2).contiguous();  // [B, N, D]
    const auto a = args(u, delta, At, Bm, Cm, Q);
    auto y = at::empty_like(u), sT = at::empty_like(s0t);
    if (kept) *kept = at::empty({a.B, a.chunks(), a.N, a.D}, u.options());
    fused_scan_forward(a, s0t.data_ptr<float>(), y.data_ptr<float>(), sT.data_ptr<float>(),
                       kept ? kept->data_ptr<float>() : nullptr);
    return {y, sT.transpose(1, 2)};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto v = ctx->get_saved_variables();
    const auto &u = v[0], &delta = v[1], &At = v[2], &Bm = v[3], &Cm = v[4], &kept = v[5];
    const auto a = args(u, delta, At, Bm, Cm, ctx->saved_data["Q"].toInt());
    auto gy = grads[0].defined() ? grads[0].contiguous() : at::zeros_like(u);
    auto gsT = grads[1].defined() ? grads[1].transpose(1, 2).contiguous() : at::zeros({a.B, a.N, a.D}, u.options());
    auto gu = at::empty_like(u), gdelta = at::empty_like(u), gs0 = at::empty_like(gsT), gA = at::empty_like(gsT);
    auto gB = at::empty({a.blocks(), a.B, a.T, a.N}, u.options()), gC = at::empty_like(gB);
    fused_scan_backward(a, kept.data_ptr<float>(), gy.data_ptr<float>(), gsT.data_ptr<float>(), gu.data_ptr<float>(),
                        gdelta.data_ptr<float>(), gs0.data_ptr<float>(), gB.data_ptr<float>(), gC.data_ptr<float>(),
                        gA.data_ptr<float>());
    return {gu, gdelta, gA.sum(0).t(), gB.sum(0), gC.sum(0), gs0.transpose(1, 2), at::Tensor()};
  }
};
}  // namespace

// The fused scan where it applies (fp32 on the CPU); otherwise the chunked scan.
ScanResult scan_fused(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& Bm,
                      const at::Tensor& Cm, const at::Tensor& s0, int64_t chunk_size) {
  if (!u.device().is_cpu() || u.scalar_type() != at::kFloat) return scan_chunk(u, delta, A, Bm, Cm, s0, chunk_size);
  auto f = [](const at::Tensor& t) { return t.to(at::kFloat); };
  const bool grad = at::GradMode::is_enabled() && (u.requires_grad() || delta.requires_grad() || A.requires_grad() ||
                                                   Bm.requires_grad() || Cm.requires_grad() || s0.requires_grad());
  if (!grad) {
    // Prefill and eval: no backward will come, so no chunk-entry states to keep (B * T/Q * N * D floats).
    auto out = FusedScanFunction::run(u.contiguous(), delta.contiguous(), f(A).t().contiguous(), f(Bm).contiguous(),
                                      f(Cm).contiguous(), f(s0), chunk_size, nullptr);
    return {out[0], out[1]};
  }
  auto out = FusedScanFunction::apply(u, delta, f(A), f(Bm), f(Cm), f(s0), chunk_size);
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
    auto dt = ds[t].unsqueeze(-1);                                             // [B, D, 1]
    s = (dt * A).exp() * s + (dt * us[t].unsqueeze(-1)) * bs[t].unsqueeze(1);  // [B, D, N]
    ys.push_back(at::matmul(s, cs[t].unsqueeze(-1)).squeeze(-1));              // [B, D]
  }
  return {at::stack(ys, 1), s};
}

}  // namespace mamba
}  // namespace linearnexus
