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
//   ssd_pass_kernel    (ssd_common.cuh; the backward runs it in reverse for the state adjoint) one
//                      block per (batch, head, kPTile channels): ONE sequential loop over the
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
#include "ssd_common.cuh"

namespace linearnexus {
namespace mamba2 {
namespace cuda {
namespace {

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

  load_tile<kSsdThreads, In>(Cs, LC, static_cast<const In*>(a.Cm) + bt0 * a.C_row + grp * N, a.C_row, valid, kChunk, N,
                             vec);
  load_tile<kSsdThreads, In>(Bs, LC, static_cast<const In*>(a.Bm) + bt0 * a.B_row + grp * N, a.B_row, valid, kChunk, N,
                             vec);
  load_tile<kSsdThreads, In>(Xs, LX, static_cast<const In*>(a.x) + bt0 * a.x_row + h * P, a.x_row, valid, kChunk,
                             static_cast<int>(P), vec);
  load_tile<kSsdThreads, bf16>(Ss, LX, entering + ((b * a.H + h) * NC + c) * N * P, P, N, N, static_cast<int>(P), true);
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
  const size_t pass_smem = pass_smem_bytes(N);
  const size_t out_smem = (2 * kChunk * (N + 8) + (N + kChunk) * (a.P + 8)) * 2 + 2 * kChunk * 4;
  cudaError_t e = cudaFuncSetAttribute(ssd_pass_kernel<In, N, false>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(pass_smem));
  if (e != cudaSuccess) return e;
  e = cudaFuncSetAttribute(ssd_output_kernel<In, N>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(out_smem));
  if (e != cudaSuccess) return e;
  PassArgs pa;
  pa.k = a.Bm, pa.k_row = a.B_row, pa.v = a.x, pa.v_row = a.x_row, pa.init = a.s0, pa.kept = entering, pa.last = state;
  const dim3 sgrid(static_cast<unsigned>(a.P / kPTile), static_cast<unsigned>(a.H), static_cast<unsigned>(a.B));
  ssd_pass_kernel<In, N, false><<<sgrid, kSsdThreads, pass_smem, stream>>>(a, pa, vec);
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
