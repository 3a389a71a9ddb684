// What ssd_chunk.cu (forward) and ssd_chunk_bwd.cu (backward) share: the fragment loaders, the
// tile loads, the in-chunk cumulative decays, and the sequential pass over chunks that both the
// forward state pass and the backward's state-adjoint pass are (one kernel, two directions).
// Shapes and math: ssd_chunk_cuda.h; the design: ssd_chunk.cu's top comment.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>
#include <type_traits>

#include <linearnexus/cuda/tiles.cuh>
#include "ssd_chunk_cuda.h"

namespace linearnexus {
namespace mamba2 {
namespace cuda {
namespace {

using namespace ::linearnexus::mma;  // the SDK's tensor-core primitives and tiles (mma.cuh, tiles.cuh)
using bf16 = __nv_bfloat16;

// Warp 0 only: the chunk's cumulative log-decays Gs[kChunk] and dt Ds[kChunk] (lane l has tokens 2l,
// 2l + 1; an inclusive warp scan of the pair sums). Tokens past `valid` have g = 0 and dt = 0: they
// neither decay nor write. bt0 = b * T + the chunk's first token.
__device__ void chunk_decays(const SsdArgs& a, int64_t bt0, int h, int valid, float* Gs, float* Ds) {
  const int lane = threadIdx.x & 31, j = 2 * lane;
  float g0 = 0.f, g1 = 0.f, d0 = 0.f, d1 = 0.f;
  if (j < valid) g0 = a.g[(bt0 + j) * a.g_row + h], d0 = a.dt ? a.dt[(bt0 + j) * a.dt_row + h] : 1.f;
  if (j + 1 < valid) g1 = a.g[(bt0 + j + 1) * a.g_row + h], d1 = a.dt ? a.dt[(bt0 + j + 1) * a.dt_row + h] : 1.f;
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
  Ds[j] = d0;
  Ds[j + 1] = d1;
}

// What the two directions of the pass over chunks differ in. Per chunk, with K [kChunk, N] of the
// group and V [kChunk, kPTile] of the head, it stores the running matrix R [N, P] (fp32 in registers)
// before the chunk's update, as bf16, then
//   forward  (state S):      R <- exp(G_last) R + (K ⊙ exp(G_last - G) dt)^T V    K = B, V = x, chunks 0, 1, ..
//   backward (adjoint dS):   R <- exp(G_last) R + (K ⊙ exp(G))^T V                K = C, V = dy, chunks .., 1, 0
// so `kept` chunk c holds the state entering chunk c (forward) or the adjoint of the state leaving it
// (backward), and `last` gets the final state (forward) or the adjoint of s0 (backward).
struct PassArgs {
  const void* k = nullptr;  // [B, T, G, N] rows k_row apart (x's dtype)
  int64_t k_row = 0;
  const void* v = nullptr;  // [B, T, H, P] rows v_row apart (x's dtype)
  int64_t v_row = 0;
  const float* init = nullptr;  // [B, H, N, P] or null (zeros)
  bf16* kept = nullptr;         // [B, H, chunks, N, P]
  float* last = nullptr;        // [B, H, N, P]
};

// Grid (P / kPTile, H, B), kSsdThreads threads: warp w owns the rows (w + 4 mt) * 16 .. +15 of R
// (mt < N / 64) and all kPTile columns, as m16n8 accumulators. One sequential loop over the chunks
// with R in registers; the next chunk's K streams in by cp.async while this one computes. Fuses the
// cumulative decay, the weights, the [N, L] x [L, kPTile] product on tensor cores and the carry.
template <typename In, int N, bool Backward>
__global__ void __launch_bounds__(kSsdThreads) ssd_pass_kernel(const SsdArgs a, const PassArgs pa, bool vec) {
  constexpr int MT = N / 64, NT = kPTile / 8;
  constexpr int LK = N + 8, LV = kPTile + 8;  // padded row strides: conflict-free ldmatrix
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* Ksm = reinterpret_cast<bf16*>(smem);                // [2][kChunk][LK]: this chunk's K and the next
  bf16* Vsm = Ksm + 2 * kChunk * LK;                        // [kChunk][LV]: v_j w_j
  float* Gs = reinterpret_cast<float*>(Vsm + kChunk * LV);  // [kChunk]
  float* Ds = Gs + kChunk;                                  // [kChunk]
  float* Ws = Ds + kChunk;                                  // [kChunk]
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, gq = lane >> 2, tq = lane & 3;
  const int p0 = blockIdx.x * kPTile, h = blockIdx.y;
  const int64_t b = blockIdx.z, T = a.T, P = a.P, NC = (T + kChunk - 1) / kChunk;
  const int grp = static_cast<int>(h / (a.H / a.G));
  const In* ksrc = static_cast<const In*>(pa.k) + b * T * pa.k_row + grp * N;
  const In* vsrc = static_cast<const In*>(pa.v) + b * T * pa.v_row + h * P + p0;
  const int64_t bh = b * a.H + h;
  auto chunk_of = [&](int64_t it) { return Backward ? NC - 1 - it : it; };
  auto rows_in = [&](int64_t c) { return static_cast<int>(T - c * kChunk < kChunk ? T - c * kChunk : kChunk); };

  float R[MT][NT][4];  // element e: row (warp + 4 mt) * 16 + gq + 8 (e / 2), column p0 + nt * 8 + 2 tq + e % 2
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int n = (warp + 4 * mt) * 16 + gq + 8 * (e >> 1), p = p0 + nt * 8 + 2 * tq + (e & 1);
        R[mt][nt][e] = pa.init ? pa.init[(bh * N + n) * P + p] : 0.f;
      }

  if (NC > 0)
    load_tile<kSsdThreads, In>(Ksm, LK, ksrc + chunk_of(0) * kChunk * pa.k_row, pa.k_row, rows_in(chunk_of(0)), kChunk,
                               N, vec);
  cp_async_commit();
  const int vr = threadIdx.x >> 1, vc = (threadIdx.x & 1) * 16;  // this thread's 16 v values
  for (int64_t it = 0; it < NC; ++it) {
    const int64_t c = chunk_of(it), t0 = c * kChunk;
    const int valid = rows_in(c);
    const bf16* Kcur = Ksm + (it & 1) * kChunk * LK;
    if (it + 1 < NC) {  // the next chunk's K streams in while this one computes
      const int64_t cn = chunk_of(it + 1);
      load_tile<kSsdThreads, In>(Ksm + ((it + 1) & 1) * kChunk * LK, LK, ksrc + cn * kChunk * pa.k_row, pa.k_row,
                                 rows_in(cn), kChunk, N, vec);
    }
    cp_async_commit();  // (an empty group on the last chunk keeps the count uniform)
    float vv[16];
#pragma unroll
    for (int i = 0; i < 16; ++i) vv[i] = vr < valid ? to_f(vsrc[(t0 + vr) * pa.v_row + vc + i]) : 0.f;
    bf16* E = pa.kept + ((bh * NC + c) * N) * P + p0;  // R before this chunk's update
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const int n = (warp + 4 * mt) * 16 + gq, p = nt * 8 + 2 * tq;
        store2(E + n * P + p, R[mt][nt][0], R[mt][nt][1]);
        store2(E + (n + 8) * P + p, R[mt][nt][2], R[mt][nt][3]);
      }
    if (warp == 0) {
      chunk_decays(a, b * T + t0, h, valid, Gs, Ds);
      const float last = __shfl_sync(0xffffffffu, Gs[2 * lane + 1], 31);
#pragma unroll
      for (int u = 0; u < 2; ++u) {
        const int j = 2 * lane + u;
        Ws[j] = Backward ? exp_nonpos(fminf(Gs[j], 0.f)) : exp_nonpos(fminf(last - Gs[j], 0.f)) * Ds[j];
      }
    }
    __syncthreads();
    const float w = Ws[vr];
#pragma unroll
    for (int i = 0; i < 16; i += 2)
      *reinterpret_cast<uint32_t*>(Vsm + vr * LV + vc + i) = pack_bf16x2(w * vv[i], w * vv[i + 1]);
    cp_async_wait<1>();  // this chunk's K (all but the group just committed)
    __syncthreads();
    const float carry = exp_nonpos(fminf(Gs[kChunk - 1], 0.f));
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) R[mt][nt][e] *= carry;
      }
    }
    // R += K_w^T V_w: M = the rows of R (N), K = the chunk's tokens, N = kPTile columns.
#pragma unroll
    for (int kk = 0; kk < kChunk / 16; ++kk) {
      uint32_t vb[NT / 2][4];
#pragma unroll
      for (int q = 0; q < NT / 2; ++q) b_frag_t(vb[q], Vsm, LV, kk * 16, q * 16, lane);
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        uint32_t af[4];
        a_frag_t(af, Kcur, LK, kk * 16, (warp + 4 * mt) * 16, lane);
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) mma_bf16(R[mt][nt], af, vb[nt / 2][(nt & 1) * 2], vb[nt / 2][(nt & 1) * 2 + 1]);
      }
    }
    __syncthreads();  // before the next chunk overwrites Vsm, Gs and this K buffer
  }
  float* F = pa.last + bh * N * P + p0;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      const int n = (warp + 4 * mt) * 16 + gq, p = nt * 8 + 2 * tq;
      store2(F + n * P + p, R[mt][nt][0], R[mt][nt][1]);
      store2(F + (n + 8) * P + p, R[mt][nt][2], R[mt][nt][3]);
    }
}

inline size_t pass_smem_bytes(int64_t N) { return (2 * kChunk * (N + 8) + kChunk * (kPTile + 8)) * 2 + 3 * kChunk * 4; }

}  // namespace
}  // namespace cuda
}  // namespace mamba2
}  // namespace linearnexus
