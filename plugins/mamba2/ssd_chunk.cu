// The Mamba-2 (SSD) chunked scan's forward on CUDA: scalar log-decay per head, B and C per group
// (never expanded per head), chunks of kChunk = 64 tokens. Launcher and math: ssd_chunk_cuda.h.
// STATUS: verified in the CPU emulator (emu/run.sh) only; never run on a GPU.
//
// Per chunk, with G the cumulative log-decay inside the chunk (G_i = g_1 + .. + g_i <= 0), S the
// state entering it and w_j = exp(G_last - G_j) dt_j:
//   y_i = sum_{j <= i} (C_i . B_j) exp(G_i - G_j) dt_j x_j  +  exp(G_i) C_i S        (intra + inter)
//   S  <- exp(G_last) S + (B ⊙ w)^T X
// Every exponent is clamped to <= 0 before exp (they are <= 0 in exact arithmetic; the clamp keeps
// a rounding ulp from making one positive).
//
// Two kernels:
//   ssd_state_kernel   one block per (batch, head, kPTile channels): ONE sequential loop over the
//                      chunks with the fp32 state [N, kPTile] in the mma accumulators (registers);
//                      fuses the in-chunk cumsum, the decay weights, the chunk's own state
//                      (B ⊙ w)^T X (tensor cores) and the carry, so no per-chunk state is ever
//                      written but the entering one. B of the next chunk streams in by cp.async.
//   ssd_output_kernel  one block per (batch, head, chunk): every chunk at once. Fuses C B^T, the
//                      causal decay mask, the dt scale and the product with X (the masked scores go
//                      from accumulators straight into A fragments: no [L, L] tensor in memory), and
//                      the inter-chunk term exp(G) C S_entry, into one write of y.
// Why not one kernel: the intra-chunk work (C B^T: L*L*N, then L*L*P flops) is ~2x the state pass's
// and needs no state; inside the sequential loop it would run at B*H*(P/kPTile) blocks (24 at B = 1
// for mamba2-small), split out it runs at B*H*chunks blocks. The price is one write and one read of
// the entering states.
// The entering states are kept in bf16: the output kernel (and a backward) only ever use them as
// bf16 mma operands, which rounds them anyway, so bf16 storage loses nothing more and halves the
// [B, H, chunks, N, P] traffic. The state itself (registers, and the final state) stays fp32.
#include <cuda_bf16.h>

#include <cstdint>
#include <type_traits>

#include "mma.cuh"
#include "ssd_chunk_cuda.h"

namespace linearnexus {
namespace mamba2 {
namespace cuda {
namespace {

using bf16 = __nv_bfloat16;

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(bf16 v) { return __bfloat162float(v); }

__device__ __forceinline__ void store2(float* p, float a, float b) {
  *reinterpret_cast<float2*>(p) = make_float2(a, b);
}
__device__ __forceinline__ void store2(bf16* p, float a, float b) {
  *reinterpret_cast<uint32_t*>(p) = pack_bf16x2(a, b);
}

// The fragments of one 16x16 operand tile from shared memory (bf16, row stride ld elements), by
// ldmatrix.x4 (mma.cuh gives the layouts). Row-major [m][k] tile at (m0, k0) -> the A fragment.
__device__ __forceinline__ void a_frag(uint32_t (&r)[4], const bf16* s, int ld, int m0, int k0, int lane) {
  ldmatrix_x4(r, s + (m0 + (lane & 7) + ((lane >> 3) & 1) * 8) * ld + k0 + (lane >> 4) * 8);
}
// A stored transposed, [k][m], tile at (k0, m0) -> the A fragment.
__device__ __forceinline__ void a_frag_t(uint32_t (&r)[4], const bf16* s, int ld, int k0, int m0, int lane) {
  ldmatrix_x4_trans(r, s + (k0 + (lane & 7) + (lane >> 4) * 8) * ld + m0 + ((lane >> 3) & 1) * 8);
}
// B stored [n][k], tile at (n0, k0) -> {b0, b1} of n-tile n0 .. n0+7, then {b0, b1} of n0+8 .. n0+15.
__device__ __forceinline__ void b_frag(uint32_t (&r)[4], const bf16* s, int ld, int n0, int k0, int lane) {
  ldmatrix_x4(r, s + (n0 + (lane & 7) + (lane >> 4) * 8) * ld + k0 + ((lane >> 3) & 1) * 8);
}
// B stored [k][n], tile at (k0, n0) -> the same two n-tiles.
__device__ __forceinline__ void b_frag_t(uint32_t (&r)[4], const bf16* s, int ld, int k0, int n0, int lane) {
  ldmatrix_x4_trans(r, s + (k0 + (lane & 7) + ((lane >> 3) & 1) * 8) * ld + n0 + (lane >> 4) * 8);
}

// rows x cols (cols % 8 == 0) of an operand whose rows are `row` elements apart -> bf16 shared memory
// (row stride ld); rows at or past `valid` are zeros (the tail chunk). bf16 with `vec` (16-byte
// aligned rows) goes by cp.async, to be waited for by the caller; anything else by loads + rounding.
template <typename In>
__device__ void load_tile(bf16* dst, int ld, const In* src, int64_t row, int valid, int rows, int cols, bool vec) {
  const int per_row = cols / 8;
  for (int i = threadIdx.x; i < rows * per_row; i += kSsdThreads) {
    const int r = i / per_row, c = (i % per_row) * 8;
    bf16* d = dst + r * ld + c;
    if (r >= valid) {
      *reinterpret_cast<uint4*>(d) = make_uint4(0u, 0u, 0u, 0u);
      continue;
    }
    const In* s = src + r * row + c;
    if constexpr (std::is_same<In, bf16>::value) {
      if (vec) {
        cp_async_16(d, s);
        continue;
      }
    }
    uint4 v;
    v.x = pack_bf16x2(to_f(s[0]), to_f(s[1]));
    v.y = pack_bf16x2(to_f(s[2]), to_f(s[3]));
    v.z = pack_bf16x2(to_f(s[4]), to_f(s[5]));
    v.w = pack_bf16x2(to_f(s[6]), to_f(s[7]));
    *reinterpret_cast<uint4*>(d) = v;
  }
}

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

// The state pass. Grid (P / kPTile, H, B), kSsdThreads threads: warp w owns the state rows
// (w + 4 mt) * 16 .. +15 (mt < N / 64) and all kPTile columns, as m16n8 accumulators.
// entering [B, H, chunks, N, P] bf16 (out), state [B, H, N, P] fp32 (out).
template <typename In, int N>
__global__ void __launch_bounds__(kSsdThreads)
    ssd_state_kernel(const SsdArgs a, bool vec, bf16* entering, float* state) {
  constexpr int MT = N / 64, NT = kPTile / 8;
  constexpr int LB = N + 8, LX = kPTile + 8;  // padded row strides: conflict-free ldmatrix
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* Bsm = reinterpret_cast<bf16*>(smem);                // [2][kChunk][LB]: this chunk's B and the next
  bf16* Xsm = Bsm + 2 * kChunk * LB;                        // [kChunk][LX]: x_j w_j
  float* Gs = reinterpret_cast<float*>(Xsm + kChunk * LX);  // [kChunk]
  float* Ds = Gs + kChunk;                                  // [kChunk]
  float* Ws = Ds + kChunk;                                  // [kChunk]
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, gq = lane >> 2, tq = lane & 3;
  const int p0 = blockIdx.x * kPTile, h = blockIdx.y;
  const int64_t b = blockIdx.z, T = a.T, P = a.P, NC = (T + kChunk - 1) / kChunk;
  const int grp = static_cast<int>(h / (a.H / a.G));
  const In* Bsrc = static_cast<const In*>(a.Bm) + b * T * a.B_row + grp * N;
  const In* xsrc = static_cast<const In*>(a.x) + b * T * a.x_row + h * P + p0;
  const int64_t bh = b * a.H + h;

  float S[MT][NT][4];  // element e: row (warp + 4 mt) * 16 + gq + 8 (e / 2), column p0 + nt * 8 + 2 tq + e % 2
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int n = (warp + 4 * mt) * 16 + gq + 8 * (e >> 1), p = p0 + nt * 8 + 2 * tq + (e & 1);
        S[mt][nt][e] = a.s0 ? a.s0[(bh * N + n) * P + p] : 0.f;
      }

  load_tile<In>(Bsm, LB, Bsrc, a.B_row, T < kChunk ? static_cast<int>(T) : kChunk, kChunk, N, vec);
  cp_async_commit();
  const int xr = threadIdx.x >> 1, xc = (threadIdx.x & 1) * 16;  // this thread's 16 x values
  for (int64_t c = 0; c < NC; ++c) {
    const int64_t t0 = c * kChunk;
    const int valid = static_cast<int>(T - t0 < kChunk ? T - t0 : kChunk);
    const bf16* Bcur = Bsm + (c & 1) * kChunk * LB;
    if (c + 1 < NC) {  // the next chunk's B streams in while this one computes
      const int64_t left = T - t0 - kChunk;
      load_tile<In>(Bsm + ((c + 1) & 1) * kChunk * LB, LB, Bsrc + (t0 + kChunk) * a.B_row, a.B_row,
                    static_cast<int>(left < kChunk ? left : kChunk), kChunk, N, vec);
    }
    cp_async_commit();  // (an empty group on the last chunk keeps the count uniform)
    float xv[16];
#pragma unroll
    for (int i = 0; i < 16; ++i) xv[i] = xr < valid ? to_f(xsrc[(t0 + xr) * a.x_row + xc + i]) : 0.f;
    // The state entering this chunk, for the output kernel.
    bf16* E = entering + ((bh * NC + c) * N) * P + p0;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const int n = (warp + 4 * mt) * 16 + gq, p = nt * 8 + 2 * tq;
        store2(E + n * P + p, S[mt][nt][0], S[mt][nt][1]);
        store2(E + (n + 8) * P + p, S[mt][nt][2], S[mt][nt][3]);
      }
    if (warp == 0) {
      chunk_decays(a, b * T + t0, h, valid, Gs, Ds);
      const float last = __shfl_sync(0xffffffffu, Gs[2 * lane + 1], 31);
      Ws[2 * lane] = exp_nonpos(fminf(last - Gs[2 * lane], 0.f)) * Ds[2 * lane];
      Ws[2 * lane + 1] = exp_nonpos(fminf(last - Gs[2 * lane + 1], 0.f)) * Ds[2 * lane + 1];
    }
    __syncthreads();
    const float w = Ws[xr];
#pragma unroll
    for (int i = 0; i < 16; i += 2)
      *reinterpret_cast<uint32_t*>(Xsm + xr * LX + xc + i) = pack_bf16x2(w * xv[i], w * xv[i + 1]);
    cp_async_wait<1>();  // this chunk's B (all but the group just committed)
    __syncthreads();
    const float carry = exp_nonpos(fminf(Gs[kChunk - 1], 0.f));
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) S[mt][nt][e] *= carry;
          // S += (B ⊙ w)^T X: M = state rows (N), K = the chunk's tokens, N = kPTile columns.
#pragma unroll
    for (int kk = 0; kk < kChunk / 16; ++kk) {
      uint32_t xb[NT / 2][4];
#pragma unroll
      for (int q = 0; q < NT / 2; ++q) b_frag_t(xb[q], Xsm, LX, kk * 16, q * 16, lane);
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        uint32_t af[4];
        a_frag_t(af, Bcur, LB, kk * 16, (warp + 4 * mt) * 16, lane);
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) mma_bf16(S[mt][nt], af, xb[nt / 2][(nt & 1) * 2], xb[nt / 2][(nt & 1) * 2 + 1]);
      }
    }
    __syncthreads();  // before the next chunk overwrites Xsm, Gs and this B buffer
  }
  float* F = state + bh * N * P + p0;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      const int n = (warp + 4 * mt) * 16 + gq, p = nt * 8 + 2 * tq;
      store2(F + n * P + p, S[mt][nt][0], S[mt][nt][1]);
      store2(F + (n + 8) * P + p, S[mt][nt][2], S[mt][nt][3]);
    }
}

// The output. Grid (chunks, H, B), kSsdThreads threads: warp w owns the chunk's rows i = 16 w .. +15
// (causal: it needs the columns j < 16 (w + 1) of C B^T only). y [B, T, H, P] contiguous (out).
template <typename In, int N>
__global__ void __launch_bounds__(kSsdThreads)
    ssd_output_kernel(const SsdArgs a, bool vec, const bf16* entering, In* y) {
  constexpr int LC = N + 8;
  const int LX = static_cast<int>(a.P) + 8;
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* Cs = reinterpret_cast<bf16*>(smem);                // [kChunk][LC]
  bf16* Bs = Cs + kChunk * LC;                             // [kChunk][LC]
  bf16* Ss = Bs + kChunk * LC;                             // [N][LX]: the state entering the chunk
  bf16* Xs = Ss + N * LX;                                  // [kChunk][LX]
  float* Gs = reinterpret_cast<float*>(Xs + kChunk * LX);  // [kChunk]
  float* Ds = Gs + kChunk;                                 // [kChunk]
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, gq = lane >> 2, tq = lane & 3;
  const int h = blockIdx.y;
  const int64_t c = blockIdx.x, b = blockIdx.z, T = a.T, P = a.P, NC = (T + kChunk - 1) / kChunk;
  const int grp = static_cast<int>(h / (a.H / a.G));
  const int64_t t0 = c * kChunk, bt0 = b * T + t0;
  const int valid = static_cast<int>(T - t0 < kChunk ? T - t0 : kChunk);

  load_tile<In>(Cs, LC, static_cast<const In*>(a.Cm) + bt0 * a.C_row + grp * N, a.C_row, valid, kChunk, N, vec);
  load_tile<In>(Bs, LC, static_cast<const In*>(a.Bm) + bt0 * a.B_row + grp * N, a.B_row, valid, kChunk, N, vec);
  load_tile<In>(Xs, LX, static_cast<const In*>(a.x) + bt0 * a.x_row + h * P, a.x_row, valid, kChunk,
                static_cast<int>(P), vec);
  load_tile<bf16>(Ss, LX, entering + ((b * a.H + h) * NC + c) * N * P, P, N, N, static_cast<int>(P), true);
  cp_async_commit();
  if (warp == 0) chunk_decays(a, bt0, h, valid, Gs, Ds);
  cp_async_wait<0>();
  __syncthreads();

  const int i0 = warp * 16;
  // Scores C B^T for the rows of this warp, columns j < 16 (warp + 1): n-tiles 0 .. 2 warp + 1.
  float sc[8][4];
#pragma unroll
  for (int nt = 0; nt < 8; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) sc[nt][e] = 0.f;
#pragma unroll
  for (int kt = 0; kt < N / 16; ++kt) {
    uint32_t af[4];
    a_frag(af, Cs, LC, i0, kt * 16, lane);
#pragma unroll
    for (int q = 0; q < 4; ++q)
      if (q <= warp) {
        uint32_t bb[4];
        b_frag(bb, Bs, LC, q * 16, kt * 16, lane);
        mma_bf16(sc[2 * q], af, bb[0], bb[1]);
        mma_bf16(sc[2 * q + 1], af, bb[2], bb[3]);
      }
  }
  // Mask, decay and dt, rounded into A fragments (k = the chunk's tokens j): the accumulators of
  // n-tiles 2q and 2q + 1 are exactly the A fragment of k-tile q.
  const int ia = i0 + gq, ib = ia + 8;
  const float Ga = Gs[ia], Gb = Gs[ib];
  uint32_t pf[4][4];
#pragma unroll
  for (int q = 0; q < 4; ++q)
    if (q <= warp) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int nt = 2 * q + half;
        float v[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int i = e < 2 ? ia : ib, j = nt * 8 + 2 * tq + (e & 1);
          const float Gi = e < 2 ? Ga : Gb;
          v[e] = j <= i ? sc[nt][e] * exp_nonpos(fminf(Gi - Gs[j], 0.f)) * Ds[j] : 0.f;
        }
        pf[q][half * 2] = pack_bf16x2(v[0], v[1]);
        pf[q][half * 2 + 1] = pack_bf16x2(v[2], v[3]);
      }
    }
  const float ea = exp_nonpos(fminf(Ga, 0.f)), eb = exp_nonpos(fminf(Gb, 0.f));
  In* yb = y + (bt0 * a.H + h) * P;
  for (int pt = 0; pt < P; pt += kPTile) {
    float acc[4][4];
#pragma unroll
    for (int nt = 0; nt < 4; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[nt][e] = 0.f;
        // Inter-chunk: exp(G_i) C_i S_entry (M = rows, K = N, N = kPTile columns).
#pragma unroll
    for (int kt = 0; kt < N / 16; ++kt) {
      uint32_t af[4], s0f[4], s1f[4];
      a_frag(af, Cs, LC, i0, kt * 16, lane);
      b_frag_t(s0f, Ss, LX, kt * 16, pt, lane);
      b_frag_t(s1f, Ss, LX, kt * 16, pt + 16, lane);
      mma_bf16(acc[0], af, s0f[0], s0f[1]);
      mma_bf16(acc[1], af, s0f[2], s0f[3]);
      mma_bf16(acc[2], af, s1f[0], s1f[1]);
      mma_bf16(acc[3], af, s1f[2], s1f[3]);
    }
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) acc[nt][0] *= ea, acc[nt][1] *= ea, acc[nt][2] *= eb, acc[nt][3] *= eb;
      // Intra-chunk: the masked scores times X (K = the tokens j <= the warp's last row).
#pragma unroll
    for (int q = 0; q < 4; ++q)
      if (q <= warp) {
        uint32_t x0[4], x1[4];
        b_frag_t(x0, Xs, LX, q * 16, pt, lane);
        b_frag_t(x1, Xs, LX, q * 16, pt + 16, lane);
        mma_bf16(acc[0], pf[q], x0[0], x0[1]);
        mma_bf16(acc[1], pf[q], x0[2], x0[3]);
        mma_bf16(acc[2], pf[q], x1[0], x1[1]);
        mma_bf16(acc[3], pf[q], x1[2], x1[3]);
      }
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
      const int p = pt + nt * 8 + 2 * tq;
      if (ia < valid) store2(yb + ia * a.H * P + p, acc[nt][0], acc[nt][1]);
      if (ib < valid) store2(yb + ib * a.H * P + p, acc[nt][2], acc[nt][3]);
    }
  }
}

// ---- launchers (the emulator takes the file up to here) ----

template <typename In, int N>
cudaError_t launch(const SsdArgs& a, bool vec, void* y, float* state, bf16* entering, cudaStream_t stream) {
  const size_t state_smem = (2 * kChunk * (N + 8) + kChunk * (kPTile + 8)) * 2 + 3 * kChunk * 4;
  const size_t out_smem = (2 * kChunk * (N + 8) + (N + kChunk) * (a.P + 8)) * 2 + 2 * kChunk * 4;
  cudaError_t e = cudaFuncSetAttribute(ssd_state_kernel<In, N>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(state_smem));
  if (e != cudaSuccess) return e;
  e = cudaFuncSetAttribute(ssd_output_kernel<In, N>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(out_smem));
  if (e != cudaSuccess) return e;
  const dim3 sgrid(static_cast<unsigned>(a.P / kPTile), static_cast<unsigned>(a.H), static_cast<unsigned>(a.B));
  ssd_state_kernel<In, N><<<sgrid, kSsdThreads, state_smem, stream>>>(a, vec, entering, state);
  const int64_t NC = ssd_chunks(a.T);
  if (NC > 0) {
    const dim3 ogrid(static_cast<unsigned>(NC), static_cast<unsigned>(a.H), static_cast<unsigned>(a.B));
    ssd_output_kernel<In, N><<<ogrid, kSsdThreads, out_smem, stream>>>(a, vec, entering, static_cast<In*>(y));
  }
  return cudaGetLastError();
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

}  // namespace

cudaError_t ssd_forward(const SsdArgs& a, void* y, float* state, void* entering, cudaStream_t stream) {
  if (!ssd_supported(a.N, a.P) || a.G <= 0 || a.H % a.G != 0) return cudaErrorInvalidValue;
  if (a.B == 0 || a.H == 0) return cudaSuccess;
  auto* E = static_cast<bf16*>(entering);
  if (a.dtype == DType::F32) {
    return a.N == 64 ? launch<float, 64>(a, false, y, state, E, stream)
                     : launch<float, 128>(a, false, y, state, E, stream);
  }
  // cp.async moves 16-byte pieces: every row start of x, B and C 16-byte aligned.
  const bool vec =
      aligned16(a.x) && aligned16(a.Bm) && aligned16(a.Cm) && a.x_row % 8 == 0 && a.B_row % 8 == 0 && a.C_row % 8 == 0;
  return a.N == 64 ? launch<bf16, 64>(a, vec, y, state, E, stream) : launch<bf16, 128>(a, vec, y, state, E, stream);
}

}  // namespace cuda
}  // namespace mamba2
}  // namespace linearnexus
