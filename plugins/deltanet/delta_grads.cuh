// The per-chunk gradient kernels of the delta rule's backward (delta_chunk_bwd.cu has the math, the
// two sequential-pass kernels and the launchers): delta_grad_kernel, then delta_wy_kernel, both one
// block per (batch, head, chunk), all chunks at once.
#pragma once

#include "delta_common.cuh"

namespace linearnexus {
namespace deltanet {
namespace cuda {
namespace {

inline size_t grad_smem_bytes(int64_t D) {
  return (5 * kChunk + 2 * D) * (D + 8) * 2 + (kChunk * (kChunk + 1) + 3 * kChunk + kThreads) * 4;
}

// dq, dk = (dO v'^T ⊙ D, lower)^T q + exp(G_L - G) v' dSn^T, dw = -dv' S^T and dg's terms from o and
// the state's carry. Warp w owns the chunk's tokens 16 w .. +15 (as i in dq, as j in dk). Writes dq,
// dk and dg (delta_wy_kernel adds into the last two) and the workspace dw. q, k, dO [B, T, H, D]; v', dv'
// [B, H, T, D] and S, dSn [B, H, chunks, D, D] bf16 -> dq, dk [B, T, H, D] fp32, dg [B, T, H], dw [B, H, T, D].
template <typename In, int D>
__global__ void __launch_bounds__(kThreads)
    delta_grad_kernel(const DeltaArgs a, const DeltaSaved s, const DeltaGrads g, bool vec) {
  constexpr int LK = D + 8;
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* Qs = reinterpret_cast<bf16*>(smem);           // [kChunk][LK]
  bf16* Ks = Qs + kChunk * LK;                        // [kChunk][LK]
  bf16* Vn = Ks + kChunk * LK;                        // [kChunk][LK]: v'
  bf16* Os = Vn + kChunk * LK;                        // [kChunk][LK]: dO
  bf16* Dv = Os + kChunk * LK;                        // [kChunk][LK]: dv'
  bf16* Ss = Dv + kChunk * LK;                        // [D][LK]: S entering the chunk
  bf16* Ns = Ss + D * LK;                             // [D][LK]: dSn, the adjoint of the state leaving it
  float* Am = reinterpret_cast<float*>(Ns + D * LK);  // [kChunk][kChunk + 1]: dg's pair terms
  float* Gs = Am + kChunk * (kChunk + 1);
  float* us = Gs + kChunk;  // q_i . exp(G_i) dO_i S^T
  float* cs = us + kChunk;  // k_j . exp(G_L - G_j) v'_j dSn^T
  float* red = cs + kChunk;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, h = blockIdx.y;
  const int64_t c = blockIdx.x, b = blockIdx.z, T = a.T, H = a.H, NC = (T + kChunk - 1) / kChunk, t0 = c * kChunk;
  const int64_t bt0 = b * T + t0, bh = b * H + h, tile = (bh * NC + c) * D * D;
  const int valid = static_cast<int>(T - t0 < kChunk ? T - t0 : kChunk);
  load_tile<kThreads, In>(Qs, LK, static_cast<const In*>(a.q) + bt0 * a.q_row + h * D, a.q_row, valid, kChunk, D, vec);
  load_tile<kThreads, In>(Ks, LK, static_cast<const In*>(a.k) + bt0 * a.k_row + h * D, a.k_row, valid, kChunk, D, vec);
  load_tile<kThreads, In>(Os, LK, static_cast<const In*>(g.dout) + (bt0 * H + h) * D, H * D, valid, kChunk, D, vec);
  load_tile<kThreads, bf16>(Vn, LK, static_cast<const bf16*>(s.vn) + (bh * T + t0) * D, D, valid, kChunk, D, true);
  load_tile<kThreads, bf16>(Dv, LK, static_cast<const bf16*>(g.dvn) + (bh * T + t0) * D, D, valid, kChunk, D, true);
  load_tile<kThreads, bf16>(Ss, LK, static_cast<const bf16*>(s.h) + tile, D, D, D, D, true);
  load_tile<kThreads, bf16>(Ns, LK, static_cast<const bf16*>(g.dh) + tile, D, D, D, D, true);
  cp_async_commit();
  load_gates(s.gc + bh * T + t0, valid, Gs);
  cp_async_wait<0>();
  __syncthreads();

  float sq = 0.f;  // this thread's share of <dSn, S>
  for (int i = threadIdx.x; i < D * D; i += kThreads)
    sq += bf(Ss + (i / D) * LK + i % D) * bf(Ns + (i / D) * LK + i % D);
  red[threadIdx.x] = sq;

  const int r0 = warp * 16, ra = acc_row(r0, 0, lane), rb = ra + 8;
  uint32_t wf[4][4], vf[4][4];
  {
    float acc[8][4], qk[8][4];
    pair_tile(acc, Vn, LK, Os, LK, D, r0, warp, 3, false, lane);  // [j, i]: v'_j . dO_i
    pair_frags(wf, acc, r0, warp, 3, lane,
               [&](float x, int j, int i) { return i >= j ? x * expn(Gs[i] - Gs[j]) : 0.f; });
    pair_tile(acc, Os, LK, Vn, LK, D, r0, 0, warp, false, lane);  // [i, j]: dO_i . v'_j
    pair_frags(vf, acc, r0, 0, warp, lane,
               [&](float x, int i, int j) { return j <= i ? x * expn(Gs[i] - Gs[j]) : 0.f; });
    pair_tile(qk, Qs, LK, Ks, LK, D, r0, 0, warp, false, lane);  // [i, j]: q_i . k_j
#pragma unroll
    for (int nt = 0; nt < 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int i = acc_row(r0, e, lane), j = acc_col(nt, e, lane);
        Am[i * (kChunk + 1) + j] = j < i ? acc[nt][e] * qk[nt][e] * expn(Gs[i] - Gs[j]) : 0.f;
      }
  }
  const float GL = Gs[kChunk - 1];
  const float ea = expn(Gs[ra]), eb = expn(Gs[rb]), la = expn(GL - Gs[ra]), lb = expn(GL - Gs[rb]);
  float u_a = 0.f, u_b = 0.f, c_a = 0.f, c_b = 0.f;
  float* dq = g.dq + (bt0 * H + h) * D;
  float* dk = g.dk + (bt0 * H + h) * D;
  bf16* dw = static_cast<bf16*>(g.dw) + (bh * T + t0) * D;
  for (int nn = 0; nn < D; nn += 32) {  // 32 key channels at a time
    float aq[4][4], ak[4][4], aw[4][4];
    zero(aq), zero(ak), zero(aw);
#pragma unroll
    for (int kt = 0; kt < D / 16; ++kt) {  // dO S^T, v' dSn^T, dv' S^T (K = the value channels)
      uint32_t f[4];
      a_frag(f, Os, LK, r0, kt * 16, lane);
      mma_32<true>(aq, f, Ss, LK, kt * 16, nn, lane);
      a_frag(f, Vn, LK, r0, kt * 16, lane);
      mma_32<true>(ak, f, Ns, LK, kt * 16, nn, lane);
      a_frag(f, Dv, LK, r0, kt * 16, lane);
      mma_32<true>(aw, f, Ss, LK, kt * 16, nn, lane);
    }
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
      const int n = nn + acc_col(nt, 0, lane);
      aq[nt][0] *= ea, aq[nt][1] *= ea, aq[nt][2] *= eb, aq[nt][3] *= eb;
      ak[nt][0] *= la, ak[nt][1] *= la, ak[nt][2] *= lb, ak[nt][3] *= lb;
      u_a += aq[nt][0] * bf(Qs + ra * LK + n) + aq[nt][1] * bf(Qs + ra * LK + n + 1);
      u_b += aq[nt][2] * bf(Qs + rb * LK + n) + aq[nt][3] * bf(Qs + rb * LK + n + 1);
      c_a += ak[nt][0] * bf(Ks + ra * LK + n) + ak[nt][1] * bf(Ks + ra * LK + n + 1);
      c_b += ak[nt][2] * bf(Ks + rb * LK + n) + ak[nt][3] * bf(Ks + rb * LK + n + 1);
      if (ra < valid) store2(dw + ra * D + n, -aw[nt][0], -aw[nt][1]);
      if (rb < valid) store2(dw + rb * D + n, -aw[nt][2], -aw[nt][3]);
    }
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      if (q <= warp) mma_32<false>(aq, vf[q], Ks, LK, q * 16, nn, lane);  // + (dO v'^T D) k
      if (q >= warp) mma_32<false>(ak, wf[q], Qs, LK, q * 16, nn, lane);  // + (dO v'^T D)^T q
    }
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
      const int n = nn + acc_col(nt, 0, lane);
      if (ra < valid)
        store2(dq + ra * H * D + n, aq[nt][0], aq[nt][1]), store2(dk + ra * H * D + n, ak[nt][0], ak[nt][1]);
      if (rb < valid)
        store2(dq + rb * H * D + n, aq[nt][2], aq[nt][3]), store2(dk + rb * H * D + n, ak[nt][2], ak[nt][3]);
    }
  }
  u_a = quad_sum(u_a), u_b = quad_sum(u_b), c_a = quad_sum(c_a), c_b = quad_sum(c_b);
  if ((lane & 3) == 0) us[ra] = u_a, us[rb] = u_b, cs[ra] = c_a, cs[rb] = c_b;
  __syncthreads();
  if (g.dg) {
    float carried = 0.f;  // exp(G_L) <dSn, S>
    for (int i = 0; i < kThreads; ++i) carried += red[i];
    chunk_dg(Am, us, cs, expn(GL) * carried, g.dg + bt0 * H + h, H, valid, false);
  }
}

inline size_t wy_smem_bytes(int64_t D) {
  return (7 * kChunk * (D + 8) + 2 * kChunk * (kChunk + 8)) * 2 + (kChunk * (kChunk + 1) + 5 * kChunk) * 4;
}

// Through the UT transform: dX = T^T dv', dY = T^T dw, dA; writes dv and dbeta, adds dk's and dg's
// last parts into delta_grad_kernel's. Warp w owns the tokens 16 w .. +15 (as j in dX, dY; as i in dA).
// T [B, H, T, 64], dv', dw, u, w [B, H, T, D] bf16; k, v [B, T, H, D]; beta [B, T, H] -> dv [B, T, H, D],
// dbeta [B, T, H] fp32; dk, dg added into.
template <typename In, int D>
__global__ void __launch_bounds__(kThreads)
    delta_wy_kernel(const DeltaArgs a, const DeltaSaved s, const DeltaGrads g, bool vec) {
  constexpr int LK = D + 8, LT = kChunk + 8;
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* Du = reinterpret_cast<bf16*>(smem);                // [kChunk][LK]: du = dv'
  bf16* Dw = Du + kChunk * LK;                             // [kChunk][LK]: dw
  bf16* Us = Dw + kChunk * LK;                             // [kChunk][LK]: u
  bf16* Ws = Us + kChunk * LK;                             // [kChunk][LK]: w
  bf16* Ks = Ws + kChunk * LK;                             // [kChunk][LK]: k
  bf16* Xs = Ks + kChunk * LK;                             // [kChunk][LK]: dX
  bf16* Ys = Xs + kChunk * LK;                             // [kChunk][LK]: dY
  bf16* Ts = Ys + kChunk * LK;                             // [kChunk][LT]: T = (I + A)^-1
  bf16* Bm = Ts + kChunk * LT;                             // [kChunk][LT]: B = dA D beta_i
  float* Am = reinterpret_cast<float*>(Bm + kChunk * LT);  // [kChunk][kChunk + 1]: dg's pair terms
  float* Gs = Am + kChunk * (kChunk + 1);
  float* Bs = Gs + kChunk;   // beta
  float* ys = Bs + kChunk;   // beta exp(G_j) k_j . dY_j
  float* zs = ys + kChunk;   // zeros
  float* dbs = zs + kChunk;  // dbeta
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, h = blockIdx.y;
  const int64_t c = blockIdx.x, b = blockIdx.z, T = a.T, H = a.H, t0 = c * kChunk, bt0 = b * T + t0, bh = b * H + h;
  const int valid = static_cast<int>(T - t0 < kChunk ? T - t0 : kChunk);
  const int64_t ws = (bh * T + t0) * D;
  load_tile<kThreads, bf16>(Du, LK, static_cast<const bf16*>(g.dvn) + ws, D, valid, kChunk, D, true);
  load_tile<kThreads, bf16>(Dw, LK, static_cast<const bf16*>(g.dw) + ws, D, valid, kChunk, D, true);
  load_tile<kThreads, bf16>(Us, LK, static_cast<const bf16*>(s.u) + ws, D, valid, kChunk, D, true);
  load_tile<kThreads, bf16>(Ws, LK, static_cast<const bf16*>(s.w) + ws, D, valid, kChunk, D, true);
  load_tile<kThreads, In>(Ks, LK, static_cast<const In*>(a.k) + bt0 * a.k_row + h * D, a.k_row, valid, kChunk, D, vec);
  load_tile<kThreads, bf16>(Ts, LT, static_cast<const bf16*>(s.ainv) + (bh * T + t0) * kChunk, kChunk, valid, kChunk,
                            kChunk, true);
  cp_async_commit();
  load_gates(s.gc + bh * T + t0, valid, Gs);
  if (threadIdx.x < kChunk) {
    const int t = threadIdx.x;
    Bs[t] = t < valid ? a.beta[(bt0 + t) * a.beta_row + h] : 0.f;
    zs[t] = 0.f;
  }
  cp_async_wait<0>();
  __syncthreads();

  const int r0 = warp * 16, ra = acc_row(r0, 0, lane), rb = ra + 8;
  const float ga = expn(Gs[ra]), gb = expn(Gs[rb]), ba = Bs[ra], bb = Bs[rb];
  const In* vp = static_cast<const In*>(a.v) + bt0 * a.v_row + h * D;
  float* dv = g.dv + (bt0 * H + h) * D;
  float* dk = g.dk + (bt0 * H + h) * D;
  float xv_a = 0.f, xv_b = 0.f, yk_a = 0.f, yk_b = 0.f;  // dX . v and dY . exp(G) k of rows ra, rb
  for (int pt = 0; pt < D; pt += 32) {
    float ax[4][4], ay[4][4];
    zero(ax), zero(ay);
    for (int q = warp; q < 4; ++q) {  // T^T: rows j, k = the tokens i >= j
      uint32_t tf[4];
      a_frag_t(tf, Ts, LT, q * 16, r0, lane);
      mma_32<false>(ax, tf, Du, LK, q * 16, pt, lane);
      mma_32<false>(ay, tf, Dw, LK, q * 16, pt, lane);
    }
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
      const int p = pt + acc_col(nt, 0, lane);
      store2(Xs + ra * LK + p, ax[nt][0], ax[nt][1]), store2(Xs + rb * LK + p, ax[nt][2], ax[nt][3]);
      store2(Ys + ra * LK + p, ay[nt][0], ay[nt][1]), store2(Ys + rb * LK + p, ay[nt][2], ay[nt][3]);
      yk_a += ga * (ay[nt][0] * bf(Ks + ra * LK + p) + ay[nt][1] * bf(Ks + ra * LK + p + 1));
      yk_b += gb * (ay[nt][2] * bf(Ks + rb * LK + p) + ay[nt][3] * bf(Ks + rb * LK + p + 1));
      if (ra < valid) {
        xv_a += ax[nt][0] * to_f(vp[ra * a.v_row + p]) + ax[nt][1] * to_f(vp[ra * a.v_row + p + 1]);
        store2(dv + ra * H * D + p, ba * ax[nt][0], ba * ax[nt][1]);
        float* d = dk + ra * H * D + p;
        store2(d, d[0] + ba * ga * ay[nt][0], d[1] + ba * ga * ay[nt][1]);
      }
      if (rb < valid) {
        xv_b += ax[nt][2] * to_f(vp[rb * a.v_row + p]) + ax[nt][3] * to_f(vp[rb * a.v_row + p + 1]);
        store2(dv + rb * H * D + p, bb * ax[nt][2], bb * ax[nt][3]);
        float* d = dk + rb * H * D + p;
        store2(d, d[0] + bb * gb * ay[nt][2], d[1] + bb * gb * ay[nt][3]);
      }
    }
  }
  __syncthreads();  // Xs, Ys
  // dA = -(dX u^T + dY w^T), rows i of this warp, columns j < i; B = dA D beta_i.
  uint32_t bfr[4][4];
  float da_a = 0.f, da_b = 0.f;  // sum_j dA_ij D_ij k_i . k_j
  {
    float acc[8][4], kk[8][4];
    pair_tile(acc, Xs, LK, Us, LK, D, r0, 0, warp, false, lane);
    pair_tile(acc, Ys, LK, Ws, LK, D, r0, 0, warp, true, lane);
    pair_tile(kk, Ks, LK, Ks, LK, D, r0, 0, warp, false, lane);
#pragma unroll
    for (int nt = 0; nt < 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int i = acc_row(r0, e, lane), j = acc_col(nt, e, lane);
        const float t = j < i ? -acc[nt][e] * expn(Gs[i] - Gs[j]) : 0.f;
        (e < 2 ? da_a : da_b) += t * kk[nt][e];
        acc[nt][e] = t * Bs[i];
        Am[i * (kChunk + 1) + j] = acc[nt][e] * kk[nt][e];  // dA_ij A_ij
        Bm[i * LT + j] = __float2bfloat16_rn(acc[nt][e]);
      }
    pair_frags(bfr, acc, r0, 0, warp, lane, [](float x, int, int) { return x; });
  }
  xv_a = quad_sum(xv_a), xv_b = quad_sum(xv_b), yk_a = quad_sum(yk_a), yk_b = quad_sum(yk_b);
  da_a = quad_sum(da_a), da_b = quad_sum(da_b);
  if ((lane & 3) == 0) {
    dbs[ra] = xv_a + yk_a + da_a, dbs[rb] = xv_b + yk_b + da_b;
    ys[ra] = ba * yk_a, ys[rb] = bb * yk_b;
  }
  __syncthreads();  // Bm, Am, dbs, ys
  // dk += B k (rows i, tokens j < i) + B^T k (rows j, tokens i > j).
  for (int pt = 0; pt < D; pt += 32) {
    float acc[4][4];
    zero(acc);
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      if (q <= warp) mma_32<false>(acc, bfr[q], Ks, LK, q * 16, pt, lane);
      if (q >= warp) {
        uint32_t bt[4];
        a_frag_t(bt, Bm, LT, q * 16, r0, lane);
        mma_32<false>(acc, bt, Ks, LK, q * 16, pt, lane);
      }
    }
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
      const int p = pt + acc_col(nt, 0, lane);
      if (ra < valid) {
        float* d = dk + ra * H * D + p;
        store2(d, d[0] + acc[nt][0], d[1] + acc[nt][1]);
      }
      if (rb < valid) {
        float* d = dk + rb * H * D + p;
        store2(d, d[0] + acc[nt][2], d[1] + acc[nt][3]);
      }
    }
  }
  if (threadIdx.x < valid) g.dbeta[(bt0 + threadIdx.x) * H + h] = dbs[threadIdx.x];
  if (g.dg) chunk_dg(Am, ys, zs, 0.f, g.dg + bt0 * H + h, H, valid, true);
}

}  // namespace
}  // namespace cuda
}  // namespace deltanet
}  // namespace linearnexus
