// The selective scan's backward on CUDA, parallel over time (launcher: scan_backward in
// selective_scan_cuda.h, where the math and the shapes are).
//
// Why this layout: the recurrence s_t = a_t s_{t-1} + b_t (a_t = exp(delta_t A), b_t = delta_t u_t B_t)
// is sequential per (channel, state), and a thread that walks a whole sequence runs T dependent
// steps (the kernel before this one: ~180 of ~385 ms of a mamba-small step on an H100). Here a
// block owns one batch row and 32 channels (a lane each: [B, T, D] rows are read 32 channels at a
// time, coalesced) and its kSegs warps split each kKeepEvery-token chunk into segments of kSteps
// tokens. Chunks are walked newest first (the adjoint flows backwards in time); the forward kept the
// state entering every chunk, so within a chunk
//   1. each thread runs its segment from a zero state and a zero adjoint (the "local" passes),
//      giving the segment's affine maps h_in -> P h_in + hl and g_in -> P g_in + gl (P: the
//      product of its decays, the same both ways);
//   2. the warps exchange (P, hl, gl) through shared memory and each composes the maps before it
//      (seeded with the kept state) and after it (seeded with the adjoint carried from the later
//      chunk): a block-wide scan of the (a, b) pairs, forwards and backwards, over kSegs segments;
//   3. each thread walks its segment again with the true entering state (keeping a_t s_{t-1})
//      and then backwards with the true adjoint, accumulating every gradient.
// The states run in passes of K at a time (registers: the segment's decays and a_t s_{t-1} are
// 2 * kSteps * K floats a thread); the per-token scalars (softplus, the gate, the loads) are
// computed once per chunk and shared by the passes. Fused: softplus(dt + bias) and its derivative,
// the gate silu(z) and dz (y recomputed as C . s + D u), the D skip, dD and dbias.
// dB and dC sum over channels: each warp sums its 32 lanes with shuffles (a reduce-scatter, one
// shuffle a value), so the block holds the sum over its 32 channels of every (t, n) of the chunk
// in shared memory, and adds it to [B, T, N] with one coalesced atomic per element (D / 32 blocks
// add to each element, instead of a [D / 32, B, T, N] array of partial sums written and re-read).
// dA is summed per (batch row, channel, state) in shared memory over the whole sequence.
#include <cuda_bf16.h>

#include "scan_math.cuh"
#include "selective_scan_cuda.h"

namespace linearnexus {
namespace mamba {
namespace cuda {
namespace {

constexpr int kSteps = 8;                   // tokens per thread and chunk (a segment)
constexpr int kSegs = kKeepEvery / kSteps;  // segments of a chunk = warps of a block
constexpr int kLanes = 32;                  // channels per block, one per lane
constexpr int kThreads = kLanes * kSegs;
static_assert(kKeepEvery % kSteps == 0 && kSegs <= 32, "a chunk is whole segments, one warp each");
// Tokens whose dB / dC a warp sums in one reduce-scatter: 2 K R values a lane (a power of two
// <= 32); more values a round cost fewer shuffles a value, and more registers.
constexpr int kReduceSteps = 2;
static_assert(kSteps % kReduceSteps == 0, "segments are whole reduction groups");
// States per pass, and whether the true backward walk recomputes the decays exp(delta A) (one more
// MUFU instruction an element) instead of keeping them from the local pass (kSteps * K registers).
// K = 2 with the decays kept: 128 registers (48 bytes spilled), 2 blocks a SM; recomputed: 8 bytes
// spilled; K = 4: 255 registers, 1 block a SM. NOT YET TIMED against each other (no GPU time came;
// commit c9e8eca has them behind LINEARNEXUS_SCAN_BWD_VARIANT=k2r|k4 for that).
constexpr int kStatesPerPass = 2;
constexpr bool kRecomputeDecay = false;

// K consecutive floats of shared memory (16- or 8-byte aligned) as one access.
template <int K>
__device__ __forceinline__ void lds(const float* p, float (&v)[K]) {
  if constexpr (K % 4 == 0) {
#pragma unroll
    for (int q = 0; q < K / 4; ++q) {
      const float4 x = reinterpret_cast<const float4*>(p)[q];
      v[4 * q] = x.x, v[4 * q + 1] = x.y, v[4 * q + 2] = x.z, v[4 * q + 3] = x.w;
    }
  } else if constexpr (K == 2) {
    const float2 x = *reinterpret_cast<const float2*>(p);
    v[0] = x.x, v[1] = x.y;
  } else {
#pragma unroll
    for (int s = 0; s < K; ++s) v[s] = p[s];
  }
}
template <int K>
__device__ __forceinline__ void sts(float* p, const float (&v)[K]) {
  if constexpr (K % 4 == 0) {
#pragma unroll
    for (int q = 0; q < K / 4; ++q)
      reinterpret_cast<float4*>(p)[q] = make_float4(v[4 * q], v[4 * q + 1], v[4 * q + 2], v[4 * q + 3]);
  } else if constexpr (K == 2) {
    *reinterpret_cast<float2*>(p) = make_float2(v[0], v[1]);
  } else {
#pragma unroll
    for (int s = 0; s < K; ++s) p[s] = v[s];
  }
}

// Sums v[0 .. V) over the warp's 32 lanes, each lane ending with one sum: the first log2(V) rounds
// halve the values a lane holds (a lane keeps the half its partner does not), the rest add the one
// value left. Afterwards v[0] is the warp's sum of value lane / (32 / V), held by the 32 / V lanes
// with that quotient. V - 1 + log2(32 / V) shuffles instead of 5 V for V separate sums.
template <int Half, int Off, int V>
__device__ __forceinline__ void warp_sum_scatter(float (&v)[V], int lane) {
  const bool upper = lane & Off;
#pragma unroll
  for (int j = 0; j < Half; ++j) {
    const float send = upper ? v[j] : v[j + Half];
    const float keep = upper ? v[j + Half] : v[j];
    v[j] = keep + __shfl_xor_sync(0xffffffffu, send, Off);
  }
  if constexpr (Half > 1) {
    warp_sum_scatter<Half / 2, Off / 2>(v, lane);
  } else {
#pragma unroll
    for (int off = Off / 2; off > 0; off >>= 1) v[0] += __shfl_xor_sync(0xffffffffu, v[0], off);
  }
}

// Grid: (ceil(D / 32), B); kThreads threads; dynamic shared memory: smem_floats(N, K) floats.
// Shapes: ScanArgs / ScanGrads (selective_scan_cuda.h); kept [B, kept_chunks(T), D, N].
template <typename T, int K, bool kRecompute>
__global__ void __launch_bounds__(kThreads, K <= 2 ? 2 : 1)
    scan_backward_kernel(const __grid_constant__ ScanArgs a, const float* __restrict__ kept,
                         const __grid_constant__ ScanGrads g) {
  constexpr int S = kSteps, R = kReduceSteps, V = 2 * K * R;
  static_assert(V <= 32 && (V & (V - 1)) == 0, "a reduce-scatter takes a power of two <= 32 values");
  extern __shared__ __align__(16) float smem[];
  const int lane = threadIdx.x % 32, w = threadIdx.x / 32;
  const int64_t b = blockIdx.y, d = static_cast<int64_t>(blockIdx.x) * kLanes + lane;
  const bool active = d < a.D;
  const int64_t dl = active ? d : a.D - 1;  // for loads; an inactive lane runs with delta = dy = 0
  const int passes = static_cast<int>((a.N + K - 1) / K), NP = passes * K;
  const int64_t chunks = (a.T + kKeepEvery - 1) / kKeepEvery;  // kept_chunks(T)
  // Shared memory (floats): the chunk's B, C and the block's dB, dC sums [kKeepEvery][NP]; the
  // segments' (P, hl, gl) [kSegs][32][K]; the adjoint entering the chunk from the later one,
  // double-buffered by chunk parity [2][passes][32][K]; dA per thread [passes][kSegs][32][K].
  float* sB = smem;
  float* sC = sB + kKeepEvery * NP;
  float* sdB = sC + kKeepEvery * NP;
  float* sdC = sdB + kKeepEvery * NP;
  float* sP = sdC + kKeepEvery * NP;
  float* sH = sP + kThreads * K;
  float* sG = sH + kThreads * K;
  float* sCarry = sG + kThreads * K;
  float* sdA = sCarry + 2 * NP * kLanes;
  for (int e = threadIdx.x; e < NP * kLanes; e += kThreads) {
    const int p = e / (kLanes * K), ln = e / K % kLanes, n = p * K + e % K;
    const int64_t dd = static_cast<int64_t>(blockIdx.x) * kLanes + ln;
    sCarry[((chunks - 1) & 1) * NP * kLanes + e] = g.dsT && dd < a.D && n < a.N ? g.dsT[(b * a.D + dd) * a.N + n] : 0.f;
  }
  for (int e = threadIdx.x; e < NP * kThreads; e += kThreads) sdA[e] = 0.f;
  const T* u_ptr = static_cast<const T*>(a.u);
  const T* dt_ptr = static_cast<const T*>(a.dt);
  const T* z_ptr = static_cast<const T*>(a.z);
  const T* dout_ptr = static_cast<const T*>(g.dout);
  const float bias = a.dt_bias ? __ldg(a.dt_bias + dl) : 0.f;
  const float Dv = a.Dskip ? __ldg(a.Dskip + dl) : 0.f;
  float dD = 0.f, dbias = 0.f;

  for (int64_t ck = chunks - 1; ck >= 0; --ck) {
    const int64_t t0 = ck * kKeepEvery, ts = t0 + w * S;  // the chunk's and this segment's first token
    __syncthreads();                                      // the previous chunk's reads of sB, sC, sdB, sdC are done
    for (int e = threadIdx.x; e < kKeepEvery * NP; e += kThreads) {
      const int i = e / NP, n = e % NP;
      const int64_t t = t0 + i, r = b * a.T + t;
      const bool in = t < a.T && n < a.N;
      sB[e] = in ? ld(static_cast<const T*>(a.Bm) + r * a.B_row + n) : 0.f;
      sC[e] = in ? ld(static_cast<const T*>(a.Cm) + r * a.C_row + n) : 0.f;
    }
    // The segment's per-token scalars. Past T (and on inactive lanes) delta = dy = 0: the step is
    // the identity for the state and the adjoint, and adds nothing to any gradient.
    float delta[S], du[S], dy[S], ddu[S], ddl[S], y[S];  // ddu = dL/d(delta u); ddl: the decay's dL/d(delta)
    {
      float uv[S], dtv[S], ov[S], zv[S];
#pragma unroll
      for (int i = 0; i < S; ++i) {  // every load first (one latency for the segment)
        const int64_t r = b * a.T + (ts + i < a.T ? ts + i : a.T - 1);
        uv[i] = ld(u_ptr + r * a.u_row + dl);
        dtv[i] = ld(dt_ptr + r * a.dt_row + dl);
        ov[i] = ld(dout_ptr + r * g.dout_row + dl);
        zv[i] = z_ptr ? ld(z_ptr + r * a.z_row + dl) : 0.f;
      }
#pragma unroll
      for (int i = 0; i < S; ++i) {
        const bool valid = active && ts + i < a.T;
        delta[i] = valid ? (a.softplus ? softplus(dtv[i] + bias) : dtv[i]) : 0.f;
        dy[i] = valid ? (z_ptr ? ov[i] * zv[i] * sigmoid(zv[i]) : ov[i]) : 0.f;  // dL/d(C . s + D u)
        du[i] = delta[i] * uv[i];
        y[i] = Dv * uv[i];
        ddu[i] = ddl[i] = 0.f;
        dD += dy[i] * uv[i];
      }
    }
    __syncthreads();  // sB, sC staged
    for (int p = 0; p < passes; ++p) {
      const int n0 = p * K;
      float A[K], A2[K];
#pragma unroll
      for (int s = 0; s < K; ++s) {
        A[s] = active && n0 + s < a.N ? __ldg(a.A + d * a.N + n0 + s) : 0.f;
        A2[s] = A[s] * kLog2e;
      }
      // 1. The local passes: from a zero state forwards, from a zero adjoint backwards.
      float ea[S][K];  // exp(delta_t A)
      float P[K], x[K];
#pragma unroll
      for (int s = 0; s < K; ++s) P[s] = 1.f, x[s] = 0.f;
#pragma unroll
      for (int i = 0; i < S; ++i) {
        float Bv[K];
        lds<K>(sB + (w * S + i) * NP + n0, Bv);
#pragma unroll
        for (int s = 0; s < K; ++s) {
          ea[i][s] = exp2_decay(delta[i] * A2[s]);
          x[s] = fmaf(ea[i][s], x[s], du[i] * Bv[s]);
          P[s] *= ea[i][s];
        }
      }
      sts<K>(sP + threadIdx.x * K, P);
      sts<K>(sH + threadIdx.x * K, x);
#pragma unroll
      for (int s = 0; s < K; ++s) x[s] = 0.f;
#pragma unroll
      for (int i = S - 1; i >= 0; --i) {
        float Cv[K];
        lds<K>(sC + (w * S + i) * NP + n0, Cv);
#pragma unroll
        for (int s = 0; s < K; ++s) x[s] = ea[i][s] * fmaf(Cv[s], dy[i], x[s]);
      }
      sts<K>(sG + threadIdx.x * K, x);
      __syncthreads();
      // 2. The true state entering the segment and the true adjoint leaving it (a_{t+1} G_{t+1}
      // at its last token t): the maps of the segments before / after it, composed.
      float h[K], gi[K];
#pragma unroll
      for (int s = 0; s < K; ++s)
        h[s] = active && n0 + s < a.N ? __ldg(kept + ((b * chunks + ck) * a.D + d) * a.N + n0 + s) : 0.f;
      for (int j = 0; j < w; ++j) {
        float Pj[K], Hj[K];
        lds<K>(sP + (j * kLanes + lane) * K, Pj);
        lds<K>(sH + (j * kLanes + lane) * K, Hj);
#pragma unroll
        for (int s = 0; s < K; ++s) h[s] = fmaf(Pj[s], h[s], Hj[s]);
      }
      lds<K>(sCarry + ((ck & 1) * passes + p) * kLanes * K + lane * K, gi);
      for (int j = kSegs - 1; j > w; --j) {
        float Pj[K], Gj[K];
        lds<K>(sP + (j * kLanes + lane) * K, Pj);
        lds<K>(sG + (j * kLanes + lane) * K, Gj);
#pragma unroll
        for (int s = 0; s < K; ++s) gi[s] = fmaf(Pj[s], gi[s], Gj[s]);
      }
      // 3a. Forwards again from the true state, keeping a_t s_{t-1} (s_t = that + b_t).
      float ah[S][K];
#pragma unroll
      for (int i = 0; i < S; ++i) {
        float Bv[K];
        lds<K>(sB + (w * S + i) * NP + n0, Bv);
#pragma unroll
        for (int s = 0; s < K; ++s) {
          ah[i][s] = ea[i][s] * h[s];
          h[s] = fmaf(du[i], Bv[s], ah[i][s]);
        }
      }
      // 3b. Backwards with the true adjoint G_t = C_t dy_t + a_{t+1} G_{t+1}:
      //   dL/d(delta u)_t += G B_t,  dL/d(delta)_t += A G a_t s_{t-1},  dA += delta_t G a_t s_{t-1},
      //   dB_t = G delta_t u_t,  dC_t = dy_t s_t  (summed over the block's channels),  y_t += C_t s_t.
      float dA[K];
#pragma unroll
      for (int s = 0; s < K; ++s) dA[s] = 0.f;
#pragma unroll
      for (int i0 = S - R; i0 >= 0; i0 -= R) {
        float v[V];  // [R steps][dB, dC][K states]
#pragma unroll
        for (int r = R - 1; r >= 0; --r) {
          const int i = i0 + r;
          float Bv[K], Cv[K];
          lds<K>(sB + (w * S + i) * NP + n0, Bv);
          lds<K>(sC + (w * S + i) * NP + n0, Cv);
#pragma unroll
          for (int s = 0; s < K; ++s) {
            const float G = fmaf(Cv[s], dy[i], gi[s]);
            const float hs = fmaf(du[i], Bv[s], ah[i][s]);
            y[i] = fmaf(Cv[s], hs, y[i]);
            v[(r * 2) * K + s] = G * du[i];
            v[(r * 2 + 1) * K + s] = dy[i] * hs;
            ddu[i] = fmaf(G, Bv[s], ddu[i]);
            const float Gah = G * ah[i][s];
            ddl[i] = fmaf(Gah, A[s], ddl[i]);
            dA[s] = fmaf(Gah, delta[i], dA[s]);
            gi[s] = (kRecompute ? exp2_decay(delta[i] * A2[s]) : ea[i][s]) * G;
          }
        }
        warp_sum_scatter<V / 2, 16>(v, lane);
        if (lane % (32 / V) == 0) {
          const int idx = lane / (32 / V), r = idx / (2 * K), which = idx / K % 2, s = idx % K;
          (which ? sdC : sdB)[(w * S + i0 + r) * NP + n0 + s] = v[0];
        }
      }
      // The adjoint leaving segment 0 (a_{t0} G_{t0}) enters the earlier chunk; after chunk 0 it is ds0.
      if (w == 0) sts<K>(sCarry + ((((ck + 1) & 1) * passes + p) * kLanes + lane) * K, gi);
      {
        float* acc = sdA + ((p * kSegs + w) * kLanes + lane) * K;
        float old[K];
        lds<K>(acc, old);
#pragma unroll
        for (int s = 0; s < K; ++s) old[s] += dA[s];
        sts<K>(acc, old);
      }
      __syncthreads();  // the next pass overwrites sP, sH, sG; after the last, sdB / sdC are complete
    }
    // The chunk's dB, dC: one coalesced atomic per element ([B, T, N] rows t0 .. are contiguous).
    for (int e = threadIdx.x; e < kKeepEvery * NP; e += kThreads) {
      const int i = e / NP, n = e % NP;
      const int64_t t = t0 + i;
      if (t < a.T && n < a.N) {
        atomicAdd(g.dB + (b * a.T + t) * a.N + n, sdB[e]);
        atomicAdd(g.dC + (b * a.T + t) * a.N + n, sdC[e]);
      }
    }
    // The segment's per-token gradients (u, dt, z, dout reloaded: the block read them this chunk).
#pragma unroll
    for (int i = 0; i < S; ++i) {
      const int64_t t = ts + i;
      if (!active || t >= a.T) continue;
      const int64_t r = b * a.T + t;
      const float uv = ld(u_ptr + r * a.u_row + d);
      float ddt = ddu[i] * uv + ddl[i];
      if (a.softplus) ddt *= sigmoid(ld(dt_ptr + r * a.dt_row + d) + bias);
      dbias += ddt;
      st(static_cast<T*>(g.du) + r * a.D + d, ddu[i] * delta[i] + Dv * dy[i]);
      st(static_cast<T*>(g.ddt) + r * a.D + d, ddt);
      if (z_ptr) {
        const float zv = ld(z_ptr + r * a.z_row + d), sg = sigmoid(zv);
        st(static_cast<T*>(g.dz) + r * g.dz_row + d,
           ld(dout_ptr + r * g.dout_row + d) * y[i] * sg * (1.f + zv * (1.f - sg)));
      }
    }
  }
  // dA and ds0 per (channel, state); dD and dbias per channel: sums over the block's warps.
  __syncthreads();
  for (int e = threadIdx.x; e < NP * kLanes; e += kThreads) {
    const int p = e / (kLanes * K), ln = e / K % kLanes, s = e % K, n = p * K + s;
    const int64_t dd = static_cast<int64_t>(blockIdx.x) * kLanes + ln;
    if (dd >= a.D || n >= a.N) continue;
    float sum = 0.f;
    for (int j = 0; j < kSegs; ++j) sum += sdA[((p * kSegs + j) * kLanes + ln) * K + s];
    g.dA[(b * a.D + dd) * a.N + n] = sum;
    if (g.ds0) g.ds0[(b * a.D + dd) * a.N + n] = sCarry[NP * kLanes + e];  // buffer (0 + 1) & 1
  }
  float* red = sP;  // [kSegs][32][2], free now
  red[threadIdx.x * 2] = dD;
  red[threadIdx.x * 2 + 1] = dbias;
  __syncthreads();
  if (w == 0 && active) {
    float sD = 0.f, sb = 0.f;
    for (int j = 0; j < kSegs; ++j) sD += red[(j * kLanes + lane) * 2], sb += red[(j * kLanes + lane) * 2 + 1];
    if (g.dDskip) g.dDskip[b * a.D + d] = sD;
    if (g.dbias) g.dbias[b * a.D + d] = sb;
  }
}

constexpr int64_t smem_floats(int64_t N, int K) {
  const int64_t NP = (N + K - 1) / K * K;
  return 4 * kKeepEvery * NP + 3 * kThreads * K + 2 * NP * kLanes + NP * kThreads;
}

template <typename T, int K, bool kRecompute>
cudaError_t launch(const ScanArgs& a, const float* kept, const ScanGrads& g, cudaStream_t stream) {
  const size_t bytes = sizeof(float) * smem_floats(a.N, K);
  auto kernel = scan_backward_kernel<T, K, kRecompute>;
  if (bytes > 48 * 1024) {  // past the default limit (N > 16 at K = 2): opt in
    const cudaError_t e =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
    if (e != cudaSuccess) return e;
  }
  const dim3 grid(static_cast<unsigned>((a.D + kLanes - 1) / kLanes), static_cast<unsigned>(a.B));
  kernel<<<grid, kThreads, bytes, stream>>>(a, kept, g);
  return cudaGetLastError();
}

}  // namespace

cudaError_t scan_backward(const ScanArgs& a, const float* kept, const ScanGrads& g, cudaStream_t stream) {
  if (a.N < 1 || a.N > kMaxState || a.B < 1 || a.T < 1 || a.D < 1) return cudaErrorInvalidValue;
  return a.dtype == DType::BF16 ? launch<__nv_bfloat16, kStatesPerPass, kRecomputeDecay>(a, kept, g, stream)
                                : launch<float, kStatesPerPass, kRecomputeDecay>(a, kept, g, stream);
}

}  // namespace cuda
}  // namespace mamba
}  // namespace linearnexus
