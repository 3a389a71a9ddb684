// The Mamba-2 (SSD) chunked scan's backward on CUDA (the forward: ssd_chunk.cu; math and shapes:
// ssd_chunk_cuda.h). STATUS: verified in the CPU emulator (emu/run.sh) only; never run on a GPU.
//
// Per chunk, with S the state entering it (kept by the forward), dSn the adjoint of the state leaving
// it, G the in-chunk cumulative log-decay, k_j = dt_j B_j, and Mij = exp(G_i - G_j) for j <= i:
//   dx_j  = dt_j dxt_j,   dxt_j = sum_{i>=j} (C_i . B_j) M_ij dy_i + exp(G_L - G_j) B_j dSn      [P]
//   dk_j  = sum_{i>=j} (dy_i . x_j) M_ij C_i + exp(G_L - G_j) dSn x_j;  dB_j += dt_j dk_j         [N]
//   ddt_j = B_j . dk_j = x_j . dxt_j
//   dC_i += sum_{j<=i} (dy_i . x_j) M_ij dt_j B_j + exp(G_i) S dy_i                               [N]
//   dg_t  = sum_{l >= t > j} A_lj + sum_{i >= t} u_i + exp(G_L) <dSn, S> + sum_{j < t} dt_j r_j
//           A_lj = (dy_l . x_j)(C_l . B_j) M_lj dt_j (the pairs whose decay g_t is part of),
//           u_i = exp(G_i) C_i . S dy_i,  r_j = x_j . exp(G_L - G_j) B_j dSn (a by-product of dxt)
// This is the reverse cumsum of C_i . dC_i - k_i . dk_i (+ <dSn, S_next> at the chunk's end) with the
// cancellation done exactly: under strong decays the two terms nearly cancel, and formed in fp32 from
// bf16 operands their difference kept only ~5% (CPU emulator) where this form keeps bf16's ~0.3%.
//
// Two kernels, mirroring the forward:
//   ssd_pass_kernel<Backward> (ssd_common.cuh): ONE reverse sequential loop over the chunks per
//     (batch, head, kPTile channels), the fp32 adjoint in registers: dS <- exp(G_L) dS +
//     (C ⊙ exp(G))^T dy; keeps dSn of every chunk (bf16, as the forward keeps S) and ends at ds0.
//   ssd_grad_kernel: one block per (batch, head, chunk), all chunks at once. Fuses the three
//     [64, 64] pair products (B C^T, x dy^T, dy x^T; masked and decayed in registers, then A
//     fragments; C B^T for dg's pair sums), every gradient above, and dg's prefix / suffix sums. dB and dC are per group: the
//     H / G heads of a group add into them with fp32 atomics (never a per-head copy in memory).
#include "ssd_common.cuh"

namespace linearnexus {
namespace mamba2 {
namespace cuda {
namespace {

__device__ __forceinline__ float quad_sum(float v) {  // over the 4 lanes that hold one row
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// acc = rows r0 .. r0 + 15 of X Y^T (X, Y [64][kdim] row-major in shared memory), column tiles q of
// 16 in [q_lo, q_hi] only (the rest stays 0).
__device__ void pair_tile(float (&acc)[8][4], const bf16* X, int ldx, const bf16* Y, int ldy, int kdim, int r0,
                          int q_lo, int q_hi, int lane) {
#pragma unroll
  for (int nt = 0; nt < 8; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[nt][e] = 0.f;
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

// The pair tile masked and decayed, rounded into A fragments f[q] (k = the tile's columns). lower:
// keep column c <= row r, times exp(G_r - G_c) dt_c; else keep c >= r, times exp(G_c - G_r).
__device__ void pair_frags(uint32_t (&f)[4][4], const float (&acc)[8][4], int r0, bool lower, const float* Gs,
                           const float* Ds, int q_lo, int q_hi, int lane) {
  const int gq = lane >> 2, tq = lane & 3;
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    f[q][0] = f[q][1] = f[q][2] = f[q][3] = 0u;
    if (q < q_lo || q > q_hi) continue;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int nt = 2 * q + half;
      float v[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = r0 + gq + 8 * (e >> 1), c = nt * 8 + 2 * tq + (e & 1);
        if (lower)
          v[e] = c <= r ? acc[nt][e] * exp_nonpos(fminf(Gs[r] - Gs[c], 0.f)) * Ds[c] : 0.f;
        else
          v[e] = c >= r ? acc[nt][e] * exp_nonpos(fminf(Gs[c] - Gs[r], 0.f)) : 0.f;
      }
      f[q][half * 2] = pack_bf16x2(v[0], v[1]);
      f[q][half * 2 + 1] = pack_bf16x2(v[2], v[3]);
    }
  }
}

// Grid (chunks, H, B), kSsdThreads threads; warp w owns the chunk's tokens 16 w .. +15 (as j in dx,
// dB, ddt; as i in dC). entering / dkept [B, H, chunks, N, P] bf16: S entering and dS leaving each chunk.
template <typename In, int N>
__global__ void __launch_bounds__(kSsdThreads)
    ssd_grad_kernel(const SsdArgs a, const SsdGrads g, bool vec, const bf16* entering, const bf16* dkept) {
  constexpr int LC = N + 8;
  const int P = static_cast<int>(a.P), LX = P + 8;
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* Cs = reinterpret_cast<bf16*>(smem);  // [kChunk][LC]
  bf16* Bs = Cs + kChunk * LC;               // [kChunk][LC]
  bf16* Ss = Bs + kChunk * LC;               // [N][LX]: S entering the chunk
  bf16* Qs = Ss + N * LX;                    // [N][LX]: dSn, the adjoint of the state leaving it
  bf16* Xs = Qs + N * LX;                    // [kChunk][LX]
  bf16* Ys = Xs + kChunk * LX;               // [kChunk][LX]: dy
  float* Gs = reinterpret_cast<float*>(Ys + kChunk * LX);
  float* Ds = Gs + kChunk;
  float* ddt_s = Ds + kChunk;     // x_j . dxt_j
  float* u_s = ddt_s + kChunk;    // u_i
  float* r_s = u_s + kChunk;      // r_j
  float* red = r_s + kChunk;      // [kSsdThreads]
  float* Am = red + kSsdThreads;  // [kChunk][kChunk + 1]: A_lj, then its row prefixes; column kChunk: dg's pair part
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, gq = lane >> 2, tq = lane & 3;
  const int h = blockIdx.y;
  const int64_t c = blockIdx.x, b = blockIdx.z, T = a.T, H = a.H, NC = (T + kChunk - 1) / kChunk;
  const int grp = static_cast<int>(h / (H / a.G));
  const int64_t t0 = c * kChunk, bt0 = b * T + t0, GN = a.G * N;
  const int valid = static_cast<int>(T - t0 < kChunk ? T - t0 : kChunk);
  const int64_t tile = ((b * H + h) * NC + c) * N * P;

  load_tile<kSsdThreads, In>(Cs, LC, static_cast<const In*>(a.Cm) + bt0 * a.C_row + grp * N, a.C_row, valid, kChunk, N,
                             vec);
  load_tile<kSsdThreads, In>(Bs, LC, static_cast<const In*>(a.Bm) + bt0 * a.B_row + grp * N, a.B_row, valid, kChunk, N,
                             vec);
  load_tile<kSsdThreads, In>(Xs, LX, static_cast<const In*>(a.x) + bt0 * a.x_row + h * P, a.x_row, valid, kChunk, P,
                             vec);
  load_tile<kSsdThreads, In>(Ys, LX, static_cast<const In*>(g.dy) + (bt0 * H + h) * P, H * P, valid, kChunk, P, vec);
  load_tile<kSsdThreads, bf16>(Ss, LX, entering + tile, P, N, N, P, true);
  load_tile<kSsdThreads, bf16>(Qs, LX, dkept + tile, P, N, N, P, true);
  cp_async_commit();
  if (warp == 0) chunk_decays(a, bt0, h, valid, Gs, Ds);
  cp_async_wait<0>();
  __syncthreads();

  float sq = 0.f;  // this thread's share of <dSn, S>
  for (int i = threadIdx.x; i < N * P; i += kSsdThreads)
    sq += __bfloat162float(Ss[(i / P) * LX + i % P]) * __bfloat162float(Qs[(i / P) * LX + i % P]);
  red[threadIdx.x] = sq;

  const int r0 = warp * 16, ra = r0 + gq, rb = ra + 8;
  uint32_t mf[4][4], wf[4][4], vf[4][4];
  {
    float acc[8][4];
    pair_tile(acc, Bs, LC, Cs, LC, N, r0, warp, 3, lane);  // [j, i]: B_j . C_i
    pair_frags(mf, acc, r0, false, Gs, Ds, warp, 3, lane);
    pair_tile(acc, Xs, LX, Ys, LX, P, r0, warp, 3, lane);  // [j, i]: x_j . dy_i
    pair_frags(wf, acc, r0, false, Gs, Ds, warp, 3, lane);
    pair_tile(acc, Ys, LX, Xs, LX, P, r0, 0, warp, lane);  // [i, j]: dy_i . x_j
    pair_frags(vf, acc, r0, true, Gs, Ds, 0, warp, lane);
    float cb[8][4];
    pair_tile(cb, Cs, LC, Bs, LC, N, r0, 0, warp, lane);  // [i, j]: C_i . B_j
#pragma unroll
    for (int nt = 0; nt < 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int i = r0 + gq + 8 * (e >> 1), j = nt * 8 + 2 * tq + (e & 1);
        Am[i * (kChunk + 1) + j] =
            j <= i ? acc[nt][e] * cb[nt][e] * exp_nonpos(fminf(Gs[i] - Gs[j], 0.f)) * Ds[j] : 0.f;
      }
  }
  const float GL = Gs[kChunk - 1];
  const float eLa = exp_nonpos(fminf(GL - Gs[ra], 0.f)), eLb = exp_nonpos(fminf(GL - Gs[rb], 0.f));
  const float eGa = exp_nonpos(fminf(Gs[ra], 0.f)), eGb = exp_nonpos(fminf(Gs[rb], 0.f));
  auto xs = [&](int r, int p) { return __bfloat162float(Xs[r * LX + p]); };

  // dxt (rows j), kPTile channels at a time: exp(G_L - G_j) B_j dSn, then + M^T dy.
  float dd_a = 0.f, dd_b = 0.f, rr_a = 0.f, rr_b = 0.f;
  In* dx = static_cast<In*>(g.dx) + (bt0 * H + h) * P;
  for (int pt = 0; pt < P; pt += kPTile) {
    float acc[4][4] = {};
#pragma unroll
    for (int kt = 0; kt < N / 16; ++kt) {
      uint32_t af[4], q0[4], q1[4];
      a_frag(af, Bs, LC, r0, kt * 16, lane);
      b_frag_t(q0, Qs, LX, kt * 16, pt, lane);
      b_frag_t(q1, Qs, LX, kt * 16, pt + 16, lane);
      mma_bf16(acc[0], af, q0[0], q0[1]);
      mma_bf16(acc[1], af, q0[2], q0[3]);
      mma_bf16(acc[2], af, q1[0], q1[1]);
      mma_bf16(acc[3], af, q1[2], q1[3]);
    }
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
      const int p = pt + nt * 8 + 2 * tq;
      acc[nt][0] *= eLa, acc[nt][1] *= eLa, acc[nt][2] *= eLb, acc[nt][3] *= eLb;
      rr_a += acc[nt][0] * xs(ra, p) + acc[nt][1] * xs(ra, p + 1);
      rr_b += acc[nt][2] * xs(rb, p) + acc[nt][3] * xs(rb, p + 1);
    }
#pragma unroll
    for (int q = 0; q < 4; ++q)
      if (q >= warp) {
        uint32_t y0[4], y1[4];
        b_frag_t(y0, Ys, LX, q * 16, pt, lane);
        b_frag_t(y1, Ys, LX, q * 16, pt + 16, lane);
        mma_bf16(acc[0], mf[q], y0[0], y0[1]);
        mma_bf16(acc[1], mf[q], y0[2], y0[3]);
        mma_bf16(acc[2], mf[q], y1[0], y1[1]);
        mma_bf16(acc[3], mf[q], y1[2], y1[3]);
      }
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
      const int p = pt + nt * 8 + 2 * tq;
      dd_a += acc[nt][0] * xs(ra, p) + acc[nt][1] * xs(ra, p + 1);
      dd_b += acc[nt][2] * xs(rb, p) + acc[nt][3] * xs(rb, p + 1);
      if (ra < valid) store2(dx + ra * H * P + p, Ds[ra] * acc[nt][0], Ds[ra] * acc[nt][1]);
      if (rb < valid) store2(dx + rb * H * P + p, Ds[rb] * acc[nt][2], Ds[rb] * acc[nt][3]);
    }
  }
  dd_a = quad_sum(dd_a), dd_b = quad_sum(dd_b), rr_a = quad_sum(rr_a), rr_b = quad_sum(rr_b);
  if (tq == 0) ddt_s[ra] = dd_a, ddt_s[rb] = dd_b, r_s[ra] = rr_a, r_s[rb] = rr_b;

  // dk (rows j) and dC (rows i), 32 state channels at a time.
  float cu_a = 0.f, cu_b = 0.f;
  float* dB = g.dB + bt0 * GN + grp * N;
  float* dC = g.dC + bt0 * GN + grp * N;
  for (int nn = 0; nn < N; nn += 32) {
    float dk[4][4] = {}, dc[4][4] = {};
    for (int kt = 0; kt < P / 16; ++kt) {
      uint32_t xf[4], yf[4], q0[4], q1[4], s0f[4], s1f[4];
      a_frag(xf, Xs, LX, r0, kt * 16, lane);
      a_frag(yf, Ys, LX, r0, kt * 16, lane);
      b_frag(q0, Qs, LX, nn, kt * 16, lane);  // dSn^T: [p][n] from dSn [n][p]
      b_frag(q1, Qs, LX, nn + 16, kt * 16, lane);
      b_frag(s0f, Ss, LX, nn, kt * 16, lane);
      b_frag(s1f, Ss, LX, nn + 16, kt * 16, lane);
      mma_bf16(dk[0], xf, q0[0], q0[1]);
      mma_bf16(dk[1], xf, q0[2], q0[3]);
      mma_bf16(dk[2], xf, q1[0], q1[1]);
      mma_bf16(dk[3], xf, q1[2], q1[3]);
      mma_bf16(dc[0], yf, s0f[0], s0f[1]);
      mma_bf16(dc[1], yf, s0f[2], s0f[3]);
      mma_bf16(dc[2], yf, s1f[0], s1f[1]);
      mma_bf16(dc[3], yf, s1f[2], s1f[3]);
    }
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
      dk[nt][0] *= eLa, dk[nt][1] *= eLa, dk[nt][2] *= eLb, dk[nt][3] *= eLb;
      dc[nt][0] *= eGa, dc[nt][1] *= eGa, dc[nt][2] *= eGb, dc[nt][3] *= eGb;
      const int n = nn + nt * 8 + 2 * tq;
      cu_a += dc[nt][0] * __bfloat162float(Cs[ra * LC + n]) + dc[nt][1] * __bfloat162float(Cs[ra * LC + n + 1]);
      cu_b += dc[nt][2] * __bfloat162float(Cs[rb * LC + n]) + dc[nt][3] * __bfloat162float(Cs[rb * LC + n + 1]);
    }
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      uint32_t f0[4], f1[4];
      if (q >= warp) {  // W C
        b_frag_t(f0, Cs, LC, q * 16, nn, lane);
        b_frag_t(f1, Cs, LC, q * 16, nn + 16, lane);
        mma_bf16(dk[0], wf[q], f0[0], f0[1]);
        mma_bf16(dk[1], wf[q], f0[2], f0[3]);
        mma_bf16(dk[2], wf[q], f1[0], f1[1]);
        mma_bf16(dk[3], wf[q], f1[2], f1[3]);
      }
      if (q <= warp) {  // V B
        b_frag_t(f0, Bs, LC, q * 16, nn, lane);
        b_frag_t(f1, Bs, LC, q * 16, nn + 16, lane);
        mma_bf16(dc[0], vf[q], f0[0], f0[1]);
        mma_bf16(dc[1], vf[q], f0[2], f0[3]);
        mma_bf16(dc[2], vf[q], f1[0], f1[1]);
        mma_bf16(dc[3], vf[q], f1[2], f1[3]);
      }
    }
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
      const int n = nn + nt * 8 + 2 * tq;
      if (ra < valid) {
        atomicAdd(dB + ra * GN + n, Ds[ra] * dk[nt][0]), atomicAdd(dB + ra * GN + n + 1, Ds[ra] * dk[nt][1]);
        atomicAdd(dC + ra * GN + n, dc[nt][0]), atomicAdd(dC + ra * GN + n + 1, dc[nt][1]);
      }
      if (rb < valid) {
        atomicAdd(dB + rb * GN + n, Ds[rb] * dk[nt][2]), atomicAdd(dB + rb * GN + n + 1, Ds[rb] * dk[nt][3]);
        atomicAdd(dC + rb * GN + n, dc[nt][2]), atomicAdd(dC + rb * GN + n + 1, dc[nt][3]);
      }
    }
  }
  cu_a = quad_sum(cu_a), cu_b = quad_sum(cu_b);
  if (tq == 0) u_s[ra] = cu_a, u_s[rb] = cu_b;
  __syncthreads();

  // dg's pair part, sum_{l >= t > j} A_lj: row prefixes (thread l), then column suffix sums (thread t).
  if (threadIdx.x < kChunk) {
    float* row = Am + threadIdx.x * (kChunk + 1);
    float run = 0.f;
    for (int t = 0; t < kChunk; ++t) {
      const float v = row[t];
      row[t] = run;  // sum_{j < t} A_lj
      run += v;
    }
  }
  __syncthreads();
  if (threadIdx.x < kChunk) {
    float sum = 0.f;
    for (int l = threadIdx.x; l < kChunk; ++l) sum += Am[l * (kChunk + 1) + threadIdx.x];
    Am[threadIdx.x * (kChunk + 1) + kChunk] = sum;
  }
  __syncthreads();

  if (warp == 0) {  // the rest of dg (lane l: tokens 2 l, 2 l + 1: warp scans), and ddt
    float s = 0.f;
    for (int i = lane; i < kSsdThreads; i += 32) s += red[i];
    const float carried = exp_nonpos(fminf(GL, 0.f)) * warp_sum(s);  // exp(G_L) <dSn, S>
    const int j = 2 * lane;
    const float u0 = u_s[j], u1 = u_s[j + 1], w0 = Ds[j] * r_s[j], w1 = Ds[j + 1] * r_s[j + 1];
    float su = u0 + u1, pw = w0 + w1;  // suffix sums of u, prefix sums of dt r
#pragma unroll
    for (int off = 1; off < 32; off *= 2) {
      const float a = __shfl_down_sync(0xffffffffu, su, off), b = __shfl_up_sync(0xffffffffu, pw, off);
      if (lane + off < 32) su += a;
      if (lane >= off) pw += b;
    }
    float su_after = __shfl_down_sync(0xffffffffu, su, 1), pw_before = __shfl_up_sync(0xffffffffu, pw, 1);
    if (lane == 31) su_after = 0.f;
    if (lane == 0) pw_before = 0.f;
    const float g0 = Am[j * (kChunk + 1) + kChunk] + (su_after + u1 + u0) + carried + pw_before;
    const float g1 = Am[(j + 1) * (kChunk + 1) + kChunk] + (su_after + u1) + carried + (pw_before + w0);
    if (j < valid) g.dg[(bt0 + j) * H + h] = g0;
    if (j + 1 < valid) g.dg[(bt0 + j + 1) * H + h] = g1;
    if (g.ddt && j < valid) g.ddt[(bt0 + j) * H + h] = ddt_s[j];
    if (g.ddt && j + 1 < valid) g.ddt[(bt0 + j + 1) * H + h] = ddt_s[j + 1];
  }
}

inline size_t grad_smem_bytes(int64_t N, int64_t P) {
  return (2 * kChunk * (N + 8) + 2 * (N + kChunk) * (P + 8)) * 2 +
         (5 * kChunk + kSsdThreads + kChunk * (kChunk + 1)) * 4;
}

// ---- launchers (the emulator takes the file up to here) ----

template <typename In, int N>
cudaError_t launch_bwd(const SsdArgs& a, const SsdGrads& g, bool vec, const bf16* entering, bf16* dkept,
                       cudaStream_t stream) {
  const size_t pass_smem = pass_smem_bytes(N), grad_smem = grad_smem_bytes(N, a.P);
  cudaError_t e = cudaFuncSetAttribute(ssd_pass_kernel<In, N, true>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(pass_smem));
  if (e != cudaSuccess) return e;
  e = cudaFuncSetAttribute(ssd_grad_kernel<In, N>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(grad_smem));
  if (e != cudaSuccess) return e;
  PassArgs pa;
  pa.k = a.Cm, pa.k_row = a.C_row, pa.v = g.dy, pa.v_row = a.H * a.P, pa.init = g.dstate, pa.kept = dkept;
  pa.last = g.ds0;
  const dim3 sgrid(static_cast<unsigned>(a.P / kPTile), static_cast<unsigned>(a.H), static_cast<unsigned>(a.B));
  ssd_pass_kernel<In, N, true><<<sgrid, kSsdThreads, pass_smem, stream>>>(a, pa, vec);
  const int64_t NC = ssd_chunks(a.T);
  if (NC > 0) {
    const dim3 grid(static_cast<unsigned>(NC), static_cast<unsigned>(a.H), static_cast<unsigned>(a.B));
    ssd_grad_kernel<In, N><<<grid, kSsdThreads, grad_smem, stream>>>(a, g, vec, entering, dkept);
  }
  return cudaGetLastError();
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

}  // namespace

cudaError_t ssd_backward(const SsdArgs& a, const void* entering, const SsdGrads& g, void* workspace,
                         cudaStream_t stream) {
  if (!ssd_supported(a.N, a.P) || a.G <= 0 || a.H % a.G != 0) return cudaErrorInvalidValue;
  if (a.B == 0 || a.H == 0) return cudaSuccess;
  const auto* E = static_cast<const bf16*>(entering);
  auto* W = static_cast<bf16*>(workspace);
  if (a.dtype == DType::F32)
    return a.N == 64 ? launch_bwd<float, 64>(a, g, false, E, W, stream)
                     : launch_bwd<float, 128>(a, g, false, E, W, stream);
  const bool vec = aligned16(a.x) && aligned16(a.Bm) && aligned16(a.Cm) && aligned16(g.dy) && a.x_row % 8 == 0 &&
                   a.B_row % 8 == 0 && a.C_row % 8 == 0;
  return a.N == 64 ? launch_bwd<bf16, 64>(a, g, vec, E, W, stream) : launch_bwd<bf16, 128>(a, g, vec, E, W, stream);
}

}  // namespace cuda
}  // namespace mamba2
}  // namespace linearnexus
