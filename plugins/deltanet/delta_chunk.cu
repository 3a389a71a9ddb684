// The delta rule's chunked forward on CUDA (DeltaNet; Gated DeltaNet with one log-decay per head),
// chunks of kChunk = 64 tokens. Launcher and math: delta_chunk_cuda.h.
// STATUS: verified in the CPU emulator (emu/run.sh) only; never run on a GPU.
//
// Per chunk, with G the cumulative log-decay inside it (G_i = g_1 + .. + g_i <= 0), D_ij =
// exp(G_i - G_j) for j <= i, and S the state entering it (the WY / UT form, Yang et al. 2024):
//   A  = strictly-lower(beta_i k_i . k_j D_ij),  T = (I + A)^-1
//   w  = T (beta exp(G) k),  u = T (beta v)           [64, D]
//   v' = u - w S                                      what each token writes, once the chunk's earlier
//                                                     tokens and S have been erased along its k
//   o  = exp(G) q S + lower(q k^T D) v'
//   S <- exp(G_L) S + (k exp(G_L - G))^T v'
// Every exponent is clamped to <= 0 before exp (they are <= 0 in exact arithmetic).
//
// Three kernels (flash-linear-attention's decomposition, with its three per-chunk preparations in one):
//   delta_prep_kernel    one block per (batch, head, chunk), all chunks at once: fuses the gates'
//                        cumsum, k k^T (tensor cores), the mask and decay, the triangular inverse
//                        (fp32: 16x16 diagonal blocks by forward substitution, one thread per column,
//                        then the block merge) and w, u (tensor cores). Keeps T (bf16) for the backward.
//   delta_state_kernel   one block per (batch, head, kVTile value channels): the ONE sequential loop
//                        over chunks, the fp32 state [D, kVTile] in the mma accumulators (registers):
//                        v' = u - w S and S <- exp(G_L) S + k~^T v', both on tensor cores; keeps the
//                        entering states and v' (bf16). The next chunk's k, w and u stream in by
//                        cp.async (its gates by plain loads into registers) while this one computes.
//   delta_output_kernel  one block per (batch, head, chunk): q k^T masked and decayed in registers,
//                        straight into A fragments, times v', plus exp(G) q S: one write of o.
// Why not fewer: the preparation (k k^T, the inverse, two [64, 64] x [64, D] products) is independent
// per chunk, and inside the sequential pass it would run at B H D / kVTile blocks (24 at B = 1 for
// C = 768), split out it runs at B H chunks; the same holds for the output. The price is writing w, u,
// v' and the entering states once (bf16: the later kernels use them only as bf16 mma operands).
//
// Kept for the backward (DeltaSaved), not recomputed: the cumulative gates (fp32), T, w, u, v' and the
// entering states (bf16): per token and head 4 + 128 + 3 * 2 D + 2 D^2 / 64 bytes, 644 at D = 64 (1,412
// at D = 128), beside q, k, v (384 at D = 64) that autograd keeps anyway; ~1.5 GB for 12 layers of
// gpt-small's size at B 16, T 1024 (computed, not measured). flash-linear-attention keeps only T and
// recomputes w, u, h and v' in its backward; that saves ~500 of the 644 bytes for a second run of the
// sequential state pass (the latency-bound part at small batch) and of the preparation's products.
// Which one wins is for a GPU measurement to say.
#include "delta_common.cuh"

namespace linearnexus {
namespace deltanet {
namespace cuda {
namespace {

// Warp 0: the chunk's cumulative log-decays Gs and betas Bs (lane l: tokens 2 l, 2 l + 1, an inclusive
// warp scan of the pair sums). Tokens past `valid` have g = 0 and beta = 0.
__device__ void chunk_gates(const DeltaArgs& a, int64_t bt0, int h, int valid, float* Gs, float* Bs) {
  const int lane = threadIdx.x & 31, j = 2 * lane;
  float g0 = 0.f, g1 = 0.f;
  if (a.g && j < valid) g0 = a.g[(bt0 + j) * a.g_row + h];
  if (a.g && j + 1 < valid) g1 = a.g[(bt0 + j + 1) * a.g_row + h];
  Bs[j] = j < valid ? a.beta[(bt0 + j) * a.beta_row + h] : 0.f;
  Bs[j + 1] = j + 1 < valid ? a.beta[(bt0 + j + 1) * a.beta_row + h] : 0.f;
  float s = g0 + g1;
#pragma unroll
  for (int off = 1; off < 32; off *= 2) {
    const float o = __shfl_up_sync(0xffffffffu, s, off);
    if (lane >= off) s += o;
  }
  float before = __shfl_up_sync(0xffffffffu, s, 1);
  if (lane == 0) before = 0.f;
  Gs[j] = before + g0;
  Gs[j + 1] = before + g0 + g1;
}

constexpr int kLA = kChunk + 1;  // fp32 [64][65] row stride
constexpr int kLT = kChunk + 8;  // bf16 [64][72] row stride (conflict-free ldmatrix)

inline size_t prep_smem_bytes(int64_t D) {
  return (3 * kChunk * (D + 8) + kChunk * kLT) * 2 + (2 * kChunk * kLA + 16 * kChunk + 2 * kChunk) * 4;
}

// Grid (chunks, H, B), kThreads threads. k, v [B, T, H, D] (rows k_row, v_row apart), beta, g [B, T, H]
// -> saved.gc [B, H, T], ainv [B, H, T, 64], w, u [B, H, T, D] (bf16) of the chunk.
template <typename In, int D>
__global__ void __launch_bounds__(kThreads) delta_prep_kernel(const DeltaArgs a, const DeltaSaved s, bool vec) {
  constexpr int LK = D + 8;
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* Ks = reinterpret_cast<bf16*>(smem);                 // [kChunk][LK]: k
  bf16* Ys = Ks + kChunk * LK;                              // [kChunk][LK]: beta exp(G) k
  bf16* Xs = Ys + kChunk * LK;                              // [kChunk][LK]: beta v
  bf16* Ts = Xs + kChunk * LK;                              // [kChunk][kLT]: T in bf16
  float* Af = reinterpret_cast<float*>(Ts + kChunk * kLT);  // [kChunk][kLA]: A
  float* Tf = Af + kChunk * kLA;                            // [kChunk][kLA]: T
  float* Xf = Tf + kChunk * kLA;                            // [16][kChunk]: the merge's products
  float* Gs = Xf + 16 * kChunk;                             // [kChunk]
  float* Bs = Gs + kChunk;                                  // [kChunk]
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, h = blockIdx.y;
  const int64_t c = blockIdx.x, b = blockIdx.z, T = a.T, t0 = c * kChunk, bt0 = b * T + t0, bh = b * a.H + h;
  const int valid = static_cast<int>(T - t0 < kChunk ? T - t0 : kChunk);
  const In* kp = static_cast<const In*>(a.k) + bt0 * a.k_row + h * D;
  const In* vp = static_cast<const In*>(a.v) + bt0 * a.v_row + h * D;

  load_tile<kThreads, In>(Ks, LK, kp, a.k_row, valid, kChunk, D, vec);
  cp_async_commit();
  if (warp == 0) chunk_gates(a, bt0, h, valid, Gs, Bs);
  __syncthreads();
  if (threadIdx.x < valid) s.gc[bh * T + t0 + threadIdx.x] = Gs[threadIdx.x];
  for (int i = threadIdx.x; i < kChunk * D / 2; i += kThreads) {  // Ys, Xs from the inputs' own precision
    const int r = i / (D / 2), col = (i % (D / 2)) * 2;
    float k0 = 0.f, k1 = 0.f, v0 = 0.f, v1 = 0.f;
    if (r < valid) {
      k0 = to_f(kp[r * a.k_row + col]), k1 = to_f(kp[r * a.k_row + col + 1]);
      v0 = to_f(vp[r * a.v_row + col]), v1 = to_f(vp[r * a.v_row + col + 1]);
    }
    const float bk = Bs[r] * expn(Gs[r]);
    store2(Ys + r * LK + col, bk * k0, bk * k1);
    store2(Xs + r * LK + col, Bs[r] * v0, Bs[r] * v1);
  }
  cp_async_wait<0>();
  __syncthreads();

  // A, the rows of this warp (columns j < i <= 16 warp + 15: tiles 0 .. warp).
  const int r0 = warp * 16;
  {
    float acc[8][4];
    pair_tile(acc, Ks, LK, Ks, LK, D, r0, 0, warp, false, lane);
#pragma unroll
    for (int nt = 0; nt < 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int i = acc_row(r0, e, lane), j = acc_col(nt, e, lane);
        Af[i * kLA + j] = j < i ? Bs[i] * acc[nt][e] * expn(Gs[i] - Gs[j]) : 0.f;
      }
  }
  __syncthreads();
  // T's diagonal 16x16 blocks: thread t < 64 gives column t of block t / 16 by forward substitution
  // (T_rc = -sum_{c <= m < r} A_rm T_mc), reading only its own column: no synchronisation.
  if (threadIdx.x < kChunk) {
    const int col = threadIdx.x, base = col & ~15;
    for (int r = 0; r < kChunk; ++r) {
      float t = r == col ? 1.f : 0.f;
      if (r > col && r < base + 16) {
        float acc = 0.f;
        for (int m = col; m < r; ++m) acc += Af[r * kLA + m] * Tf[m * kLA + col];
        t = -acc;
      }
      Tf[r * kLA + col] = t;  // rows of later blocks: overwritten by the merge
    }
  }
  __syncthreads();
  // The merge, block row by block row: T_ij = -T_ii sum_{j <= m < i} A_im T_mj (blocks j < i).
  for (int bi = 1; bi < 4; ++bi) {
    const int rb = bi * 16;
    for (int e = threadIdx.x; e < 16 * rb; e += kThreads) {
      const int r = e / rb, col = e % rb;
      float acc = 0.f;
      for (int m = col; m < rb; ++m) acc += Af[(rb + r) * kLA + m] * Tf[m * kLA + col];
      Xf[r * kChunk + col] = acc;
    }
    __syncthreads();
    for (int e = threadIdx.x; e < 16 * rb; e += kThreads) {
      const int r = e / rb, col = e % rb;
      float acc = 0.f;
      for (int m = 0; m <= r; ++m) acc += Tf[(rb + r) * kLA + rb + m] * Xf[m * kChunk + col];
      Tf[(rb + r) * kLA + col] = -acc;
    }
    __syncthreads();
  }
  bf16* ainv = static_cast<bf16*>(s.ainv) + (bh * T + t0) * kChunk;
  for (int e = threadIdx.x; e < kChunk * kChunk / 2; e += kThreads) {
    const int r = e / (kChunk / 2), col = (e % (kChunk / 2)) * 2;
    store2(Ts + r * kLT + col, Tf[r * kLA + col], Tf[r * kLA + col + 1]);
    if (r < valid) store2(ainv + r * kChunk + col, Tf[r * kLA + col], Tf[r * kLA + col + 1]);
  }
  __syncthreads();
  // w = T Y, u = T X: rows of this warp, k = the tokens j <= i (tiles 0 .. warp).
  bf16* wp = static_cast<bf16*>(s.w) + (bh * T + t0) * D;
  bf16* up = static_cast<bf16*>(s.u) + (bh * T + t0) * D;
  const int ra = acc_row(r0, 0, lane), rb = ra + 8;
  for (int pt = 0; pt < D; pt += 32) {
    float aw[4][4], au[4][4];
    zero(aw), zero(au);
    for (int q = 0; q <= warp; ++q) {
      uint32_t af[4];
      a_frag(af, Ts, kLT, r0, q * 16, lane);
      mma_32<false>(aw, af, Ys, LK, q * 16, pt, lane);
      mma_32<false>(au, af, Xs, LK, q * 16, pt, lane);
    }
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
      const int p = pt + acc_col(nt, 0, lane);
      if (ra < valid) store2(wp + ra * D + p, aw[nt][0], aw[nt][1]), store2(up + ra * D + p, au[nt][0], au[nt][1]);
      if (rb < valid) store2(wp + rb * D + p, aw[nt][2], aw[nt][3]), store2(up + rb * D + p, au[nt][2], au[nt][3]);
    }
  }
}

inline size_t state_smem_bytes(int64_t D) {
  return (4 * kChunk * (D + 8) + (D + 3 * kChunk) * (kVTile + 8)) * 2 + kChunk * 4;
}

// Grid (D / kVTile, H, B), kThreads threads: warp w owns the rows (w + 4 mt) * 16 .. +15 of S (mt < D
// / 64) and its kVTile columns v0 .. as m16n8 accumulators, and the chunk's tokens 16 w .. +15 of v'.
// k [B, T, H, D]; w, u [B, H, T, D]; s0 [B, H, D, D] -> saved.h [B, H, chunks, D, D], vn [B, H, T, D] (bf16)
// and last [B, H, D, D] fp32.
template <typename In, int D>
__global__ void __launch_bounds__(kThreads)
    delta_state_kernel(const DeltaArgs a, const DeltaSaved s, bool vec, float* last) {
  constexpr int MT = D / 64, NT = kVTile / 8, LK = D + 8, LV = kVTile + 8;
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* Ks = reinterpret_cast<bf16*>(smem);  // [2][kChunk][LK]: k of this chunk and the next
  bf16* Ws = Ks + 2 * kChunk * LK;           // [2][kChunk][LK]: w likewise
  bf16* Ss = Ws + 2 * kChunk * LK;           // [D][LV]: S (bf16) entering the chunk
  bf16* Us = Ss + D * LV;                    // [2][kChunk][LV]: u of this chunk and the next
  bf16* Vd = Us + 2 * kChunk * LV;           // [kChunk][LV]: v' exp(G_L - G)
  float* Gs = reinterpret_cast<float*>(Vd + kChunk * LV);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, gq = lane >> 2, tq = lane & 3;
  const int v0 = blockIdx.x * kVTile, h = blockIdx.y;
  const int64_t b = blockIdx.z, T = a.T, NC = (T + kChunk - 1) / kChunk, bh = b * a.H + h;
  const In* kp = static_cast<const In*>(a.k) + b * T * a.k_row + h * D;
  const bf16* wp = static_cast<const bf16*>(s.w) + bh * T * D;
  auto rows_in = [&](int64_t c) { return static_cast<int>(T - c * kChunk < kChunk ? T - c * kChunk : kChunk); };
  // Chunk c's k, w and u into buffer c % 2 (cp.async), and its log-decay for thread t < kChunk.
  auto prefetch = [&](int64_t c, float& gate) {
    const int buf = static_cast<int>(c & 1), n = rows_in(c);
    load_tile<kThreads, In>(Ks + buf * kChunk * LK, LK, kp + c * kChunk * a.k_row, a.k_row, n, kChunk, D, vec);
    load_tile<kThreads, bf16>(Ws + buf * kChunk * LK, LK, wp + c * kChunk * D, D, n, kChunk, D, true);
    load_tile<kThreads, bf16>(Us + buf * kChunk * LV, LV,
                              static_cast<const bf16*>(s.u) + (bh * T + c * kChunk) * D + v0, D, n, kChunk, kVTile,
                              true);
    if (threadIdx.x < kChunk) gate = s.gc[bh * T + c * kChunk + (threadIdx.x < n ? threadIdx.x : n - 1)];
  };

  float R[MT][NT][4];  // element e: row (warp + 4 mt) * 16 + gq + 8 (e / 2), column v0 + nt * 8 + 2 tq + e % 2
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int n = (warp + 4 * mt) * 16 + gq + 8 * (e >> 1), p = v0 + nt * 8 + 2 * tq + (e & 1);
        R[mt][nt][e] = a.s0 ? a.s0[(bh * D + n) * D + p] : 0.f;
      }
  float gate = 0.f;  // the next chunk's log-decay of token threadIdx.x (threads < kChunk)
  if (NC > 0) prefetch(0, gate);
  cp_async_commit();
  const int r0 = warp * 16, ra = r0 + gq, rb = ra + 8;
  for (int64_t c = 0; c < NC; ++c) {
    const int valid = rows_in(c), buf = static_cast<int>(c & 1);
    const int64_t t0 = c * kChunk;
    if (threadIdx.x < kChunk) Gs[threadIdx.x] = gate;
    if (c + 1 < NC) prefetch(c + 1, gate);  // the next chunk's operands stream in while this one computes
    cp_async_commit();                      // (an empty group on the last chunk keeps the count uniform)
    bf16* E = static_cast<bf16*>(s.h) + (bh * NC + c) * D * D + v0;  // S entering this chunk
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const int n = (warp + 4 * mt) * 16 + gq, p = nt * 8 + 2 * tq;
        store2(E + n * D + p, R[mt][nt][0], R[mt][nt][1]);
        store2(E + (n + 8) * D + p, R[mt][nt][2], R[mt][nt][3]);
        store2(Ss + n * LV + p, R[mt][nt][0], R[mt][nt][1]);
        store2(Ss + (n + 8) * LV + p, R[mt][nt][2], R[mt][nt][3]);
      }
    cp_async_wait<1>();  // this chunk's k, w and u (all but the group just committed)
    __syncthreads();
    const bf16* Uc = Us + buf * kChunk * LV;
    // v' = u - w S: rows ra, rb of the chunk, the kVTile columns.
    float acc[4][4];
    zero(acc);
    const bf16* Wc = Ws + buf * kChunk * LK;
#pragma unroll
    for (int kt = 0; kt < D / 16; ++kt) {
      uint32_t af[4];
      a_frag(af, Wc, LK, r0, kt * 16, lane);
      mma_32<false>(acc, af, Ss, LV, kt * 16, 0, lane);
    }
    const float GL = Gs[kChunk - 1], da = expn(GL - Gs[ra]), db = expn(GL - Gs[rb]);
    bf16* vn = static_cast<bf16*>(s.vn) + (bh * T + t0) * D + v0;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      const int p = nt * 8 + 2 * tq;
      const float x0 = bf(Uc + ra * LV + p) - acc[nt][0], x1 = bf(Uc + ra * LV + p + 1) - acc[nt][1];
      const float y0 = bf(Uc + rb * LV + p) - acc[nt][2], y1 = bf(Uc + rb * LV + p + 1) - acc[nt][3];
      if (ra < valid) store2(vn + ra * D + p, x0, x1);
      if (rb < valid) store2(vn + rb * D + p, y0, y1);
      store2(Vd + ra * LV + p, da * x0, da * x1);
      store2(Vd + rb * LV + p, db * y0, db * y1);
    }
    __syncthreads();
    // S <- exp(G_L) S + k^T (v' exp(G_L - G)): M = S's rows, K = the chunk's tokens, N = kVTile.
    const float carry = expn(GL);
    const bf16* Kc = Ks + buf * kChunk * LK;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) R[mt][nt][e] *= carry;
#pragma unroll
    for (int kk = 0; kk < kChunk / 16; ++kk) {
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        uint32_t af[4];
        a_frag_t(af, Kc, LK, kk * 16, (warp + 4 * mt) * 16, lane);
        mma_32<false>(R[mt], af, Vd, LV, kk * 16, 0, lane);
      }
    }
    __syncthreads();  // before the next chunk overwrites Ss, Vd, Gs and this chunk's buffers
  }
  float* F = last + bh * D * D + v0;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      const int n = (warp + 4 * mt) * 16 + gq, p = nt * 8 + 2 * tq;
      store2(F + n * D + p, R[mt][nt][0], R[mt][nt][1]);
      store2(F + (n + 8) * D + p, R[mt][nt][2], R[mt][nt][3]);
    }
}

inline size_t output_smem_bytes(int64_t D) { return (3 * kChunk + D) * (D + 8) * 2 + kChunk * 4; }

// Grid (chunks, H, B), kThreads threads: warp w owns the chunk's rows i = 16 w .. +15 (causal: it
// needs the columns j < 16 (w + 1) of q k^T only). o [B, T, H, D] contiguous.
template <typename In, int D>
__global__ void __launch_bounds__(kThreads)
    delta_output_kernel(const DeltaArgs a, const DeltaSaved s, bool vec, In* o) {
  constexpr int LK = D + 8;
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* Qs = reinterpret_cast<bf16*>(smem);  // [kChunk][LK]
  bf16* Ks = Qs + kChunk * LK;               // [kChunk][LK]
  bf16* Vn = Ks + kChunk * LK;               // [kChunk][LK]: v'
  bf16* Ss = Vn + kChunk * LK;               // [D][LK]: the state entering the chunk
  float* Gs = reinterpret_cast<float*>(Ss + D * LK);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, h = blockIdx.y;
  const int64_t c = blockIdx.x, b = blockIdx.z, T = a.T, NC = (T + kChunk - 1) / kChunk, t0 = c * kChunk,
                bt0 = b * T + t0;
  const int64_t bh = b * a.H + h;
  const int valid = static_cast<int>(T - t0 < kChunk ? T - t0 : kChunk);
  load_tile<kThreads, In>(Qs, LK, static_cast<const In*>(a.q) + bt0 * a.q_row + h * D, a.q_row, valid, kChunk, D, vec);
  load_tile<kThreads, In>(Ks, LK, static_cast<const In*>(a.k) + bt0 * a.k_row + h * D, a.k_row, valid, kChunk, D, vec);
  load_tile<kThreads, bf16>(Vn, LK, static_cast<const bf16*>(s.vn) + (bh * T + t0) * D, D, valid, kChunk, D, true);
  load_tile<kThreads, bf16>(Ss, LK, static_cast<const bf16*>(s.h) + (bh * NC + c) * D * D, D, D, D, D, true);
  cp_async_commit();
  load_gates(s.gc + bh * T + t0, valid, Gs);
  cp_async_wait<0>();
  __syncthreads();

  const int r0 = warp * 16, ra = acc_row(r0, 0, lane), rb = ra + 8;
  uint32_t pf[4][4];  // lower(q k^T D) of this warp's rows, as A fragments (k = the tokens j)
  {
    float sc[8][4];
    pair_tile(sc, Qs, LK, Ks, LK, D, r0, 0, warp, false, lane);
    pair_frags(pf, sc, r0, 0, warp, lane,
               [&](float x, int i, int j) { return j <= i ? x * expn(Gs[i] - Gs[j]) : 0.f; });
  }
  const float ea = expn(Gs[ra]), eb = expn(Gs[rb]);
  In* op = o + (bt0 * a.H + h) * D;
  for (int pt = 0; pt < D; pt += 32) {
    float acc[4][4];
    zero(acc);
#pragma unroll
    for (int kt = 0; kt < D / 16; ++kt) {  // exp(G_i) q_i S
      uint32_t af[4];
      a_frag(af, Qs, LK, r0, kt * 16, lane);
      mma_32<false>(acc, af, Ss, LK, kt * 16, pt, lane);
    }
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) acc[nt][0] *= ea, acc[nt][1] *= ea, acc[nt][2] *= eb, acc[nt][3] *= eb;
#pragma unroll
    for (int q = 0; q < 4; ++q)
      if (q <= warp) mma_32<false>(acc, pf[q], Vn, LK, q * 16, pt, lane);
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
      const int p = pt + acc_col(nt, 0, lane);
      if (ra < valid) store2(op + ra * a.H * D + p, acc[nt][0], acc[nt][1]);
      if (rb < valid) store2(op + rb * a.H * D + p, acc[nt][2], acc[nt][3]);
    }
  }
}

// ---- launchers (the emulator takes the file up to here) ----

template <typename K>
cudaError_t allow_smem(K kernel, size_t bytes) {
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
}

template <typename In, int D>
cudaError_t launch(const DeltaArgs& a, bool vec, void* o, float* state, const DeltaSaved& s, cudaStream_t stream) {
  const size_t ps = prep_smem_bytes(D), ss = state_smem_bytes(D), os = output_smem_bytes(D);
  cudaError_t e = allow_smem(delta_prep_kernel<In, D>, ps);
  if (e == cudaSuccess) e = allow_smem(delta_state_kernel<In, D>, ss);
  if (e == cudaSuccess) e = allow_smem(delta_output_kernel<In, D>, os);
  if (e != cudaSuccess) return e;
  const int64_t NC = delta_chunks(a.T);
  const dim3 cgrid(static_cast<unsigned>(NC), static_cast<unsigned>(a.H), static_cast<unsigned>(a.B));
  if (NC > 0) delta_prep_kernel<In, D><<<cgrid, kThreads, ps, stream>>>(a, s, vec);
  const dim3 sgrid(static_cast<unsigned>(D / kVTile), static_cast<unsigned>(a.H), static_cast<unsigned>(a.B));
  delta_state_kernel<In, D><<<sgrid, kThreads, ss, stream>>>(a, s, vec, state);
  if (NC > 0) delta_output_kernel<In, D><<<cgrid, kThreads, os, stream>>>(a, s, vec, static_cast<In*>(o));
  return cudaGetLastError();
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

}  // namespace

cudaError_t delta_forward(const DeltaArgs& a, void* o, float* state, const DeltaSaved& s, cudaStream_t stream) {
  if (!delta_supported(a.D)) return cudaErrorInvalidValue;
  if (a.B == 0 || a.H == 0) return cudaSuccess;
  if (a.dtype == DType::F32)
    return a.D == 64 ? launch<float, 64>(a, false, o, state, s, stream)
                     : launch<float, 128>(a, false, o, state, s, stream);
  // cp.async moves 16-byte pieces: every row start of q, k and v 16-byte aligned.
  const bool vec =
      aligned16(a.q) && aligned16(a.k) && aligned16(a.v) && a.q_row % 8 == 0 && a.k_row % 8 == 0 && a.v_row % 8 == 0;
  return a.D == 64 ? launch<bf16, 64>(a, vec, o, state, s, stream) : launch<bf16, 128>(a, vec, o, state, s, stream);
}

}  // namespace cuda
}  // namespace deltanet
}  // namespace linearnexus
