// What delta_chunk.cu (forward) and delta_chunk_bwd.cu (backward) share: the fragment loaders, the
// tile loads, the gates of a chunk and the warp-level [16, 64] pair products. Shapes and math:
// delta_chunk_cuda.h; the design: delta_chunk.cu's top comment.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

#include <linearnexus/cuda/tiles.cuh>
#include "delta_chunk_cuda.h"

namespace linearnexus {
namespace deltanet {
namespace cuda {
namespace {

using namespace ::linearnexus::mma;  // the SDK's tensor-core primitives and tiles (mma.cuh, tiles.cuh)
using bf16 = __nv_bfloat16;

__device__ __forceinline__ float bf(const bf16* p) { return __bfloat162float(*p); }
// The low and high bf16 of a packed pair as floats (a bf16 is the top half of its float).
__device__ __forceinline__ float pair_lo(uint32_t r) {
  const uint32_t u = r << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}
__device__ __forceinline__ float pair_hi(uint32_t r) {
  const uint32_t u = r & 0xffff0000u;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

__device__ __forceinline__ float quad_sum(float v) {  // over the 4 lanes that hold one row
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}
// exp(x) of an exponent that is <= 0 in exact arithmetic (a rounding ulp may make it positive).
__device__ __forceinline__ float expn(float x) { return exp_nonpos(fminf(x, 0.f)); }

// acc[0..3] += af times the 32 columns n0 .. n0 + 31 of B (stored [k][n] unless BN: [n][k]), k-tile k0.
template <bool BN>
__device__ __forceinline__ void mma_32(float (&acc)[4][4], const uint32_t (&af)[4], const bf16* Bs, int ld, int k0,
                                       int n0, int lane) {
  uint32_t b0[4], b1[4];
  if (BN) {
    b_frag(b0, Bs, ld, n0, k0, lane);
    b_frag(b1, Bs, ld, n0 + 16, k0, lane);
  } else {
    b_frag_t(b0, Bs, ld, k0, n0, lane);
    b_frag_t(b1, Bs, ld, k0, n0 + 16, lane);
  }
  mma_bf16(acc[0], af, b0[0], b0[1]);
  mma_bf16(acc[1], af, b0[2], b0[3]);
  mma_bf16(acc[2], af, b1[0], b1[1]);
  mma_bf16(acc[3], af, b1[2], b1[3]);
}
__device__ __forceinline__ void zero(float (&acc)[4][4]) {
#pragma unroll
  for (int i = 0; i < 4; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
}

// The chunk's cumulative log-decays (kept by the forward's first kernel) -> Gs[kChunk]; rows past
// `valid` repeat the last valid one (tokens past T decay nothing). The caller synchronises.
__device__ __forceinline__ void load_gates(const float* gc, int valid, float* Gs) {
  if (threadIdx.x < kChunk) Gs[threadIdx.x] = gc[threadIdx.x < valid ? threadIdx.x : valid - 1];
}

// acc = rows r0 .. r0 + 15 of X Y^T (X, Y [64][kdim] row-major in shared memory), added to acc when
// `add`, column tiles q of 16 in [q_lo, q_hi] only (the rest is left alone).
__device__ void pair_tile(float (&acc)[8][4], const bf16* X, int ldx, const bf16* Y, int ldy, int kdim, int r0,
                          int q_lo, int q_hi, bool add, int lane) {
  if (!add) {
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.f;
  }
  for (int kt = 0; kt < kdim / 16; ++kt) {
    uint32_t af[4];
    a_frag(af, X, ldx, r0, kt * 16, lane);
#pragma unroll
    for (int q = 0; q < 4; ++q)
      if (q >= q_lo && q <= q_hi) {
        uint32_t bb[4];
        b_frag(bb, Y, ldy, q * 16, kt * 16, lane);
        mma_bf16(acc[2 * q], af, bb[0], bb[1]);
        mma_bf16(acc[2 * q + 1], af, bb[2], bb[3]);
      }
  }
}

// Row and column of accumulator element e of n-tile nt (rows r0 .. r0 + 15, columns 0 .. 63).
__device__ __forceinline__ int acc_row(int r0, int e, int lane) { return r0 + (lane >> 2) + 8 * (e >> 1); }
__device__ __forceinline__ int acc_col(int nt, int e, int lane) { return nt * 8 + 2 * (lane & 3) + (e & 1); }

// A pair tile mapped element-wise by f(value, row, column) and rounded into A fragments fr[q] (the
// k dimension = the tile's columns), for q in [q_lo, q_hi] (zeros elsewhere).
template <typename F>
__device__ void pair_frags(uint32_t (&fr)[4][4], const float (&acc)[8][4], int r0, int q_lo, int q_hi, int lane, F f) {
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    fr[q][0] = fr[q][1] = fr[q][2] = fr[q][3] = 0u;
    if (q < q_lo || q > q_hi) continue;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int nt = 2 * q + half;
      float v[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) v[e] = f(acc[nt][e], acc_row(r0, e, lane), acc_col(nt, e, lane));
      fr[q][half * 2] = pack_bf16x2(v[0], v[1]);
      fr[q][half * 2 + 1] = pack_bf16x2(v[2], v[3]);
    }
  }
}

// dg's in-chunk sums, warp 0 (lane l: tokens 2 l, 2 l + 1), for terms of three kinds: pairs E [64][65]
// (fp32, row stride kChunk + 1) that depend on G_i - G_j (j < i), per-token terms u_i that depend on G_i,
// and w_j that depend on G_L - G_j, plus `carried` (depends on G_L):
//   dg_t = sum_{i >= t > j} E_ij + sum_{i >= t} u_i + sum_{j < t} w_j + carried
// E's rows are turned into prefix sums in place (threads < kChunk, then a barrier): call with every
// thread. Adds into dg (or stores when !add) the valid tokens' values.
__device__ void chunk_dg(float* E, const float* u, const float* w, float carried, float* dg, int64_t dg_stride,
                         int valid, bool add) {
  if (threadIdx.x < kChunk) {  // row prefixes: E_l,t <- sum_{j < t} E_lj
    float* row = E + threadIdx.x * (kChunk + 1);
    float run = 0.f;
    for (int t = 0; t < kChunk; ++t) {
      const float v = row[t];
      row[t] = run;
      run += v;
    }
  }
  __syncthreads();
  float colsum = 0.f;  // thread t < kChunk: sum_{l >= t} E_l,t (the prefixes)
  if (threadIdx.x < kChunk)
    for (int l = threadIdx.x; l < kChunk; ++l) colsum += E[l * (kChunk + 1) + threadIdx.x];
  __syncthreads();
  if (threadIdx.x < kChunk) E[threadIdx.x * (kChunk + 1) + kChunk] = colsum;
  __syncthreads();
  if (threadIdx.x < 32) {
    const int lane = threadIdx.x, j = 2 * lane;
    float su = u[j] + u[j + 1], pw = w[j] + w[j + 1];  // suffix sums of u, prefix sums of w
#pragma unroll
    for (int off = 1; off < 32; off *= 2) {
      const float x = __shfl_down_sync(0xffffffffu, su, off), y = __shfl_up_sync(0xffffffffu, pw, off);
      if (lane + off < 32) su += x;
      if (lane >= off) pw += y;
    }
    float su_after = __shfl_down_sync(0xffffffffu, su, 1), pw_before = __shfl_up_sync(0xffffffffu, pw, 1);
    if (lane == 31) su_after = 0.f;
    if (lane == 0) pw_before = 0.f;
    const float g0 = E[j * (kChunk + 1) + kChunk] + su_after + u[j + 1] + u[j] + carried + pw_before;
    const float g1 = E[(j + 1) * (kChunk + 1) + kChunk] + su_after + u[j + 1] + carried + pw_before + w[j];
    if (j < valid) dg[j * dg_stride] = (add ? dg[j * dg_stride] : 0.f) + g0;
    if (j + 1 < valid) dg[(j + 1) * dg_stride] = (add ? dg[(j + 1) * dg_stride] : 0.f) + g1;
  }
}

}  // namespace
}  // namespace cuda
}  // namespace deltanet
}  // namespace linearnexus
