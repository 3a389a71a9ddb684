// The delta rule's chunked backward on CUDA (the forward and its notation: delta_chunk.cu; shapes:
// delta_chunk_cuda.h). STATUS: verified in the CPU emulator (emu/run.sh) only; never run on a GPU.
//
// Per chunk, with S entering it, dSn the adjoint of the state leaving it, dO the output's gradient,
// P = lower(q k^T D) and k~ = k exp(G_L - G):
//   dv' = P^T dO + k~ dSn                          (v' reaches o and the next state)
//   dS  = exp(G_L) dSn + (exp(G) q)^T dO - w^T dv' (the adjoint of the entering state: the reverse pass)
//   dq  = exp(G) dO S^T + (dO v'^T ⊙ D, lower) k
//   dk  = (dO v'^T ⊙ D, lower)^T q + exp(G_L - G) v' dSn^T + [the UT transform's part]
//   du  = dv',  dw = -dv' S^T
// and through u = T X, w = T Y (X = beta v, Y = beta exp(G) k, T = (I + A)^-1):
//   dX = T^T du,  dY = T^T dw,  dA = -strictly-lower(dX u^T + dY w^T)
//   dv = beta dX,  dk += beta exp(G) dY + B k + B^T k  with B = dA ⊙ D ⊙ beta_i (row i),
//   dbeta_i = dX_i . v_i + dY_i . exp(G_i) k_i + sum_j dA_ij D_ij k_i . k_j
// dg from its pair, prefix and suffix sums (delta_common.cuh's chunk_dg): every term that depends on
// the decays is a product with exp(G_i - G_j), exp(G_i) or exp(G_L - G_j), so dg_t sums them over the
// pairs i >= t > j, the tokens i >= t or j < t directly (no q.dq - k.dk cancellation).
//
// Four kernels:
//   delta_dvlocal_kernel  per (batch, head, chunk): P^T dO (tensor cores; P in registers), bf16.
//   delta_dstate_kernel   per (batch, head, kVTile channels): the ONE reverse sequential loop, dS fp32
//                         in registers: dv' = P^T dO + k~ dS, then dS <- exp(G_L) dS + q~^T dO - w^T dv';
//                         keeps the adjoint leaving every chunk and dv' (bf16), ends at ds0.
//   delta_grad_kernel     per (batch, head, chunk): dq, dk's first two parts, dw and dg's first part
//                         (the two pair products dO v'^T and q k^T masked and decayed in registers).
//   delta_wy_kernel       per (batch, head, chunk): through the UT transform: dX, dY, dA, dv, dbeta,
//                         dk's last parts, dg's second part (adds into delta_grad_kernel's dk and dg).
// delta_grads.cuh holds the last two (this file would pass 500 lines). They could be one kernel at D = 64; at D = 128 their operands (12 [64, D] tiles and two
// [D, D] states) exceed an SM's shared memory.
#include "delta_common.cuh"
#include "delta_grads.cuh"

namespace linearnexus {
namespace deltanet {
namespace cuda {
namespace {

inline size_t dvlocal_smem_bytes(int64_t D) { return 3 * kChunk * (D + 8) * 2 + kChunk * 4; }

// Grid (chunks, H, B). dvl_j = sum_{i >= j} (k_j . q_i) D_ij dO_i; warp w owns the rows j = 16 w ...
// q, k [B, T, H, D] (rows q_row, k_row apart), dO [B, T, H, D] -> g.dvl [B, H, T, D] bf16.
template <typename In, int D>
__global__ void __launch_bounds__(kThreads)
    delta_dvlocal_kernel(const DeltaArgs a, const DeltaSaved s, const DeltaGrads g, bool vec) {
  constexpr int LK = D + 8;
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* Ks = reinterpret_cast<bf16*>(smem);  // [kChunk][LK]
  bf16* Qs = Ks + kChunk * LK;               // [kChunk][LK]
  bf16* Os = Qs + kChunk * LK;               // [kChunk][LK]: dO
  float* Gs = reinterpret_cast<float*>(Os + kChunk * LK);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, h = blockIdx.y;
  const int64_t c = blockIdx.x, b = blockIdx.z, T = a.T, t0 = c * kChunk, bt0 = b * T + t0, bh = b * a.H + h;
  const int valid = static_cast<int>(T - t0 < kChunk ? T - t0 : kChunk);
  load_tile<kThreads, In>(Ks, LK, static_cast<const In*>(a.k) + bt0 * a.k_row + h * D, a.k_row, valid, kChunk, D, vec);
  load_tile<kThreads, In>(Qs, LK, static_cast<const In*>(a.q) + bt0 * a.q_row + h * D, a.q_row, valid, kChunk, D, vec);
  load_tile<kThreads, In>(Os, LK, static_cast<const In*>(g.dout) + (bt0 * a.H + h) * D, a.H * D, valid, kChunk, D, vec);
  cp_async_commit();
  load_gates(s.gc + bh * T + t0, valid, Gs);
  cp_async_wait<0>();
  __syncthreads();
  const int r0 = warp * 16, ra = acc_row(r0, 0, lane), rb = ra + 8;
  uint32_t pf[4][4];  // [j, i]: k_j . q_i D_ij for i >= j (tiles warp .. 3)
  {
    float sc[8][4];
    pair_tile(sc, Ks, LK, Qs, LK, D, r0, warp, 3, false, lane);
    pair_frags(pf, sc, r0, warp, 3, lane,
               [&](float x, int j, int i) { return i >= j ? x * expn(Gs[i] - Gs[j]) : 0.f; });
  }
  bf16* out = static_cast<bf16*>(g.dvl) + (bh * T + t0) * D;
  for (int pt = 0; pt < D; pt += 32) {
    float acc[4][4];
    zero(acc);
#pragma unroll
    for (int q = 0; q < 4; ++q)
      if (q >= warp) mma_32<false>(acc, pf[q], Os, LK, q * 16, pt, lane);
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
      const int p = pt + acc_col(nt, 0, lane);
      if (ra < valid) store2(out + ra * D + p, acc[nt][0], acc[nt][1]);
      if (rb < valid) store2(out + rb * D + p, acc[nt][2], acc[nt][3]);
    }
  }
}

inline size_t dstate_smem_bytes(int64_t D) {
  return (6 * kChunk * (D + 8) + (D + 2 * kChunk) * (kVTile + 8)) * 2 + kChunk * 4;
}

// Grid (D / kVTile, H, B): the forward's state pass run backwards for dS (rows of S as there).
// q, k, dO [B, T, H, D]; w, dvl [B, H, T, D] bf16; dstate [B, H, D, D] -> g.dh [B, H, chunks, D, D] and
// g.dvn [B, H, T, D] (bf16), g.ds0 [B, H, D, D] fp32.
template <typename In, int D>
__global__ void __launch_bounds__(kThreads)
    delta_dstate_kernel(const DeltaArgs a, const DeltaSaved s, const DeltaGrads g, bool vec) {
  constexpr int MT = D / 64, NT = kVTile / 8, LK = D + 8, LV = kVTile + 8;
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* Ks = reinterpret_cast<bf16*>(smem);  // [2][kChunk][LK]: k of this chunk and the next
  bf16* Qs = Ks + 2 * kChunk * LK;           // [2][kChunk][LK]: q likewise
  bf16* Ws = Qs + 2 * kChunk * LK;           // [2][kChunk][LK]: w likewise
  bf16* Ss = Ws + 2 * kChunk * LK;           // [D][LV]: dS (bf16), the adjoint of the state leaving the chunk
  bf16* Os = Ss + D * LV;                    // [kChunk][LV]: exp(G) dO
  bf16* Nd = Os + kChunk * LV;               // [kChunk][LV]: -dv'
  float* Gs = reinterpret_cast<float*>(Nd + kChunk * LV);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, gq = lane >> 2, tq = lane & 3;
  const int v0 = blockIdx.x * kVTile, h = blockIdx.y;
  const int64_t b = blockIdx.z, T = a.T, NC = (T + kChunk - 1) / kChunk, bh = b * a.H + h;
  auto rows_in = [&](int64_t c) { return static_cast<int>(T - c * kChunk < kChunk ? T - c * kChunk : kChunk); };
  const int r0 = warp * 16, ra = r0 + gq, rb = ra + 8;
  const int orow = threadIdx.x >> 1, ocol = (threadIdx.x & 1) * 16;  // this thread's 16 dO values
  // Chunk c's k, q and w into buffer c % 2 (cp.async); its log-decay (thread t < kChunk), this thread's
  // 16 dO values and its accumulator fragment's dvl (bf16 pairs) into registers.
  auto prefetch = [&](int64_t c, float& gate, float(&od)[16], uint32_t(&dl)[NT][2]) {
    const int buf = static_cast<int>(c & 1), n = rows_in(c);
    const int64_t bt = b * T + c * kChunk, ws = (bh * T + c * kChunk) * D;
    load_tile<kThreads, In>(Ks + buf * kChunk * LK, LK, static_cast<const In*>(a.k) + bt * a.k_row + h * D, a.k_row, n,
                            kChunk, D, vec);
    load_tile<kThreads, In>(Qs + buf * kChunk * LK, LK, static_cast<const In*>(a.q) + bt * a.q_row + h * D, a.q_row, n,
                            kChunk, D, vec);
    load_tile<kThreads, bf16>(Ws + buf * kChunk * LK, LK, static_cast<const bf16*>(s.w) + ws, D, n, kChunk, D, true);
    if (threadIdx.x < kChunk) gate = s.gc[bh * T + c * kChunk + (threadIdx.x < n ? threadIdx.x : n - 1)];
    const In* dop = static_cast<const In*>(g.dout) + ((bt + orow) * a.H + h) * D + v0 + ocol;
#pragma unroll
    for (int i = 0; i < 16; ++i) od[i] = orow < n ? to_f(dop[i]) : 0.f;
    const bf16* dvl = static_cast<const bf16*>(g.dvl) + ws + v0;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      const int p = nt * 8 + 2 * tq;
      dl[nt][0] = ra < n ? *reinterpret_cast<const uint32_t*>(dvl + ra * D + p) : 0u;
      dl[nt][1] = rb < n ? *reinterpret_cast<const uint32_t*>(dvl + rb * D + p) : 0u;
    }
  };
  float R[MT][NT][4];  // as delta_state_kernel's
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int n = (warp + 4 * mt) * 16 + gq + 8 * (e >> 1), p = v0 + nt * 8 + 2 * tq + (e & 1);
        R[mt][nt][e] = g.dstate ? g.dstate[(bh * D + n) * D + p] : 0.f;
      }
  float gate = 0.f, od_next[16];  // the operands of the chunk the loop takes next
  uint32_t dl_next[NT][2];
  if (NC > 0) prefetch(NC - 1, gate, od_next, dl_next);
  cp_async_commit();
  for (int64_t c = NC - 1; c >= 0; --c) {
    const int valid = rows_in(c), buf = static_cast<int>(c & 1);
    const int64_t t0 = c * kChunk;
    if (threadIdx.x < kChunk) Gs[threadIdx.x] = gate;
    float od[16];
    uint32_t dl[NT][2];
#pragma unroll
    for (int i = 0; i < 16; ++i) od[i] = od_next[i];
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) dl[nt][0] = dl_next[nt][0], dl[nt][1] = dl_next[nt][1];
    if (c > 0) prefetch(c - 1, gate, od_next, dl_next);  // the previous chunk streams in while this one computes
    cp_async_commit();
    bf16* E = static_cast<bf16*>(g.dh) + (bh * NC + c) * D * D + v0;
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
    cp_async_wait<1>();  // this chunk's k, q and w
    __syncthreads();     // Gs, Ss
    const float eo = expn(Gs[orow]);
#pragma unroll
    for (int i = 0; i < 16; i += 2) store2(Os + orow * LV + ocol + i, eo * od[i], eo * od[i + 1]);
    // dv' = dvl + exp(G_L - G) k dS: rows ra, rb, the kVTile columns.
    float acc[4][4];
    zero(acc);
    const bf16* Kc = Ks + buf * kChunk * LK;
#pragma unroll
    for (int kt = 0; kt < D / 16; ++kt) {
      uint32_t af[4];
      a_frag(af, Kc, LK, r0, kt * 16, lane);
      mma_32<false>(acc, af, Ss, LV, kt * 16, 0, lane);
    }
    const float GL = Gs[kChunk - 1], da = expn(GL - Gs[ra]), db = expn(GL - Gs[rb]);
    bf16* dvn = static_cast<bf16*>(g.dvn) + (bh * T + t0) * D + v0;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      const int p = nt * 8 + 2 * tq;
      float x0 = da * acc[nt][0], x1 = da * acc[nt][1], y0 = db * acc[nt][2], y1 = db * acc[nt][3];
      x0 += pair_lo(dl[nt][0]), x1 += pair_hi(dl[nt][0]), y0 += pair_lo(dl[nt][1]), y1 += pair_hi(dl[nt][1]);
      if (ra < valid) store2(dvn + ra * D + p, x0, x1);
      if (rb < valid) store2(dvn + rb * D + p, y0, y1);
      store2(Nd + ra * LV + p, -x0, -x1);
      store2(Nd + rb * LV + p, -y0, -y1);
    }
    __syncthreads();
    // dS <- exp(G_L) dS + q^T (exp(G) dO) + w^T (-dv').
    const float carry = expn(GL);
    const bf16 *Qc = Qs + buf * kChunk * LK, *Wc = Ws + buf * kChunk * LK;
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
        a_frag_t(af, Qc, LK, kk * 16, (warp + 4 * mt) * 16, lane);
        mma_32<false>(R[mt], af, Os, LV, kk * 16, 0, lane);
        a_frag_t(af, Wc, LK, kk * 16, (warp + 4 * mt) * 16, lane);
        mma_32<false>(R[mt], af, Nd, LV, kk * 16, 0, lane);
      }
    }
    __syncthreads();  // before the next chunk overwrites Ss, Os, Nd, Gs and this buffer
  }
  float* F = g.ds0 + bh * D * D + v0;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      const int n = (warp + 4 * mt) * 16 + gq, p = nt * 8 + 2 * tq;
      store2(F + n * D + p, R[mt][nt][0], R[mt][nt][1]);
      store2(F + (n + 8) * D + p, R[mt][nt][2], R[mt][nt][3]);
    }
}

// ---- launchers (the emulator takes the file up to here) ----

template <typename K>
cudaError_t allow_smem(K kernel, size_t bytes) {
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
}

template <typename In, int D>
cudaError_t launch_bwd(const DeltaArgs& a, const DeltaSaved& s, const DeltaGrads& g, bool vec, cudaStream_t stream) {
  const size_t ls = dvlocal_smem_bytes(D), ss = dstate_smem_bytes(D), gs = grad_smem_bytes(D), ws = wy_smem_bytes(D);
  cudaError_t e = allow_smem(delta_dvlocal_kernel<In, D>, ls);
  if (e == cudaSuccess) e = allow_smem(delta_dstate_kernel<In, D>, ss);
  if (e == cudaSuccess) e = allow_smem(delta_grad_kernel<In, D>, gs);
  if (e == cudaSuccess) e = allow_smem(delta_wy_kernel<In, D>, ws);
  if (e != cudaSuccess) return e;
  const int64_t NC = delta_chunks(a.T);
  const dim3 cgrid(static_cast<unsigned>(NC), static_cast<unsigned>(a.H), static_cast<unsigned>(a.B));
  const dim3 sgrid(static_cast<unsigned>(D / kVTile), static_cast<unsigned>(a.H), static_cast<unsigned>(a.B));
  if (NC > 0) delta_dvlocal_kernel<In, D><<<cgrid, kThreads, ls, stream>>>(a, s, g, vec);
  delta_dstate_kernel<In, D><<<sgrid, kThreads, ss, stream>>>(a, s, g, vec);
  if (NC > 0) {
    delta_grad_kernel<In, D><<<cgrid, kThreads, gs, stream>>>(a, s, g, vec);
    delta_wy_kernel<In, D><<<cgrid, kThreads, ws, stream>>>(a, s, g, vec);
  }
  return cudaGetLastError();
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

}  // namespace

cudaError_t delta_backward(const DeltaArgs& a, const DeltaSaved& s, const DeltaGrads& g, cudaStream_t stream) {
  if (!delta_supported(a.D)) return cudaErrorInvalidValue;
  if (a.B == 0 || a.H == 0) return cudaSuccess;
  if (a.dtype == DType::F32)
    return a.D == 64 ? launch_bwd<float, 64>(a, s, g, false, stream) : launch_bwd<float, 128>(a, s, g, false, stream);
  const bool vec = aligned16(a.q) && aligned16(a.k) && aligned16(a.v) && aligned16(g.dout) && a.q_row % 8 == 0 &&
                   a.k_row % 8 == 0 && a.v_row % 8 == 0;
  return a.D == 64 ? launch_bwd<bf16, 64>(a, s, g, vec, stream) : launch_bwd<bf16, 128>(a, s, g, vec, stream);
}

}  // namespace cuda
}  // namespace deltanet
}  // namespace linearnexus
