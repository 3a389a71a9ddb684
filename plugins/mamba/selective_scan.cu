// The selective scan on CUDA: the fused CPU kernel's design (selective_scan.cpp) moved to the GPU.
// Launchers declared in selective_scan_cuda.h; shapes and the math are there.
//
// Why one kernel and not tensor ops: Mamba-1's decay exp(delta A) differs per (channel, state), so
// the scan has no matmul form, and any batched-op form moves [B, T, D, N] tensors through memory
// (~5 flops per element); the chunked op path launched ~150,000 kernels per training step. Here
// a thread owns S states of one channel and walks along time with them in registers (forward: 16,
// one thread per channel up to d_state 16; backward: 4); the P = ceil(N / S) threads of a channel
// are adjacent lanes and sum C . s with shuffles. B_t and C_t are shared by every channel of a block
// (one batch row) and staged in shared memory. Every input is read once per pass and the output
// written once, already gated: softplus(dt + bias), the D skip and the SiLU(z) gate are fused in, so
// none of delta, y or y * silu(z) exists in memory. Backward keeps only the states entering each
// kKeepEvery-token chunk; it recomputes the chunk's kQ-step sub-chunk boundaries, then each
// sub-chunk's states into registers, and runs the gradient recurrence backwards through them.
#include <cuda_bf16.h>

#include <type_traits>

#include "scan_math.cuh"
#include "selective_scan_cuda.h"

namespace linearnexus {
namespace mamba {
namespace cuda {
namespace {

constexpr int kThreads = 128;                  // threads per block: kThreads / P channels of one batch row
// States per thread (n = p * S + s), forward and backward. The forward gives a thread 16 states, so at
// d_state 16 one thread is one channel: the per-step scalars (softplus, the gate, the loads of u, dt,
// z) are computed once per channel, no shuffle sums C . s, and the 16 independent state updates are the
// instruction-level parallelism that hides the latency along time. The backward holds kQ steps' states
// in registers as well, so it keeps 4 per thread. Measured on an H200 (mamba-small, docs/benchmarks.md
// run 7): 8 states a lane with 8-step sub-chunks (2 lanes a channel) ran 3% slower than 4 states with
// the 16-step sub-chunks of the time.
constexpr int kForwardStates = 16;
constexpr int kBackwardStates = 4;
// Forward blocks per SM the registers must allow at one lane per channel (<= 80 registers a thread,
// no spills at d_state <= 16): at mamba-small's size (B 64, d_inner 1536: 768 blocks) 6 a SM put every
// block of the grid in one wave on 132 SMs.
constexpr int kForwardBlocksPerSM = 6;
// The backward holds kBackwardSteps steps' states in registers and allows kBackwardBlocksPerSM blocks a
// SM (<= 96 registers a thread: 20 warps a SM). Measured on an H200 (mamba-small B=64, docs/benchmarks.md
// run 7): 16 steps at 3 blocks (168 registers) 164,027 tokens/s, 8 at 4 (128) 174,480, 4 at 5 176,376: the
// latency along time is hidden by more warps, not by longer register-resident runs.
constexpr int kBackwardBlocksPerSM = 5;
constexpr int kBackwardSteps = 4;
constexpr int kStage = 32;                     // steps whose B and C the forward stages in shared memory
constexpr int kWarps = kThreads / 32;

// Sum over the P adjacent lanes of one channel; every one of them gets the sum.
template <int P>
__device__ __forceinline__ float sum_channel(float x) {
#pragma unroll
  for (int off = P / 2; off > 0; off >>= 1) x += __shfl_xor_sync(0xffffffffu, x, off);
  return x;
}

// What one thread owns: channel d of batch row b, states n = p * S + s. Lanes past D (the last
// block's tail) and states past N run along with zeros (A = 0, B = C = 0, state 0), so shuffles
// see every lane and no load needs a branch of its own.
template <typename T, int P, int S>
struct Channel {
  const ScanArgs& a;
  int64_t b, d, dl;  // dl: d clamped into range, for loads
  int p;
  bool active;
  float A[S], A2[S], bias, Dv;

  __device__ explicit Channel(const ScanArgs& args) : a(args) {
    b = blockIdx.y;
    p = threadIdx.x % P;
    d = static_cast<int64_t>(blockIdx.x) * (kThreads / P) + threadIdx.x / P;
    active = d < a.D;
    dl = active ? d : a.D - 1;
#pragma unroll
    for (int s = 0; s < S; ++s) {
      const int64_t n = p * S + s;
      A[s] = active && n < a.N ? __ldg(a.A + d * a.N + n) : 0.f;
      A2[s] = A[s] * kLog2e;
    }
    bias = a.dt_bias ? __ldg(a.dt_bias + dl) : 0.f;
    Dv = a.Dskip ? __ldg(a.Dskip + dl) : 0.f;
  }
  __device__ int64_t row(int64_t t) const { return b * a.T + t; }
  __device__ bool has(int s) const { return active && p * S + s < a.N; }
  // [B, D, N]-shaped state arrays (s0, sT, dA, ds0): this thread's element s; in one [D, N] slice of
  // the kept states [B, chunks, D, N]: in_slice(s).
  __device__ int64_t in_slice(int s) const { return d * a.N + p * S + s; }
  __device__ int64_t state_at(int s) const { return b * a.D * a.N + in_slice(s); }
  __device__ float u(int64_t t) const { return ld(static_cast<const T*>(a.u) + row(t) * a.u_row + dl); }
  __device__ float dt(int64_t t) const { return ld(static_cast<const T*>(a.dt) + row(t) * a.dt_row + dl); }
  __device__ float z(int64_t t) const { return a.z ? ld(static_cast<const T*>(a.z) + row(t) * a.z_row + dl) : 0.f; }
  __device__ float delta(float dt_raw) const { return a.softplus ? softplus(dt_raw + bias) : dt_raw; }
  // One step of the recurrence on h, given delta and delta * u.
  __device__ void step(float (&h)[S], float delta, float du, const float (&B)[S]) const {
#pragma unroll
    for (int s = 0; s < S; ++s) h[s] = exp2f(delta * A2[s]) * h[s] + du * B[s];
  }
};

// Per-channel scalars of U consecutive steps (delta, gate, ...), computed once per channel rather
// than once per lane: of a channel's P lanes, lane p computes steps p % Pm, p % Pm + Pm, ...
// (Pm = min(P, U)), and at(i) hands step i's value to every lane of the channel (a shuffle).
// Softplus, the sigmoids and the loads of u, dt, z were each lane's own before: 4x the work at N = 16.
// Measured on an H200 (mamba-small, docs/benchmarks.md): the backward got faster with it (594 -> 341
// ms per step). The forward does not use it: it gives one lane a whole channel (up to d_state 16).
template <int P, int U>
struct Split {
  static constexpr int Pm = P < U ? P : U, K = U / Pm;
  float v[K];
  // The step (0 .. U-1) of this lane's k-th value.
  __device__ static int step(int k) { return static_cast<int>(threadIdx.x % P) % Pm + k * Pm; }
  __device__ float at(int i) const {
    if (P == 1) return v[i];
    return __shfl_sync(0xffffffffu, v[i / Pm], static_cast<int>((threadIdx.x & 31) - threadIdx.x % P) + i % Pm);
  }
};

// Stages B and C of `rows` steps from t0 in shared memory as fp32 (zeros past T and past N). Every
// channel of a block is of one batch row and reads the same B_t and C_t: coalesced loads once per
// block instead of scalar loads per lane and step, read back as broadcasts.
template <typename T, int NP>
__device__ __forceinline__ void stage_BC(const ScanArgs& a, int64_t b, int64_t t0, int rows, float (*sB)[NP], float (*sC)[NP]) {
  for (int e = threadIdx.x; e < rows * NP; e += kThreads) {
    const int i = e / NP, n = e % NP;
    const int64_t t = t0 + i, r = b * a.T + t;
    const bool in = t < a.T && n < a.N;
    sB[i][n] = in ? ld(static_cast<const T*>(a.Bm) + r * a.B_row + n) : 0.f;
    sC[i][n] = in ? ld(static_cast<const T*>(a.Cm) + r * a.C_row + n) : 0.f;
  }
}

// A lane's S (a multiple of 4) staged values of one step, as 16-byte shared-memory loads.
template <int S>
__device__ __forceinline__ void read_staged(const float* row, float (&v)[S]) {
#pragma unroll
  for (int q = 0; q < S / 4; ++q) {
    const float4 x = reinterpret_cast<const float4*>(row)[q];
    v[4 * q] = x.x, v[4 * q + 1] = x.y, v[4 * q + 2] = x.z, v[4 * q + 3] = x.w;
  }
}

// ---- forward ------------------------------------------------------------------------------------
// One pass over time per thread (kForwardStates states of one channel; one thread per channel up to
// d_state 16). Fuses: softplus(dt + bias), the scan, C . s, the D skip and the SiLU(z) gate; writes
// only `out` (and the states: the final one, and the chunk-entry ones when a backward will come).
// B and C are the same for every channel of the block (one batch row): the block stages kStage steps
// of them in shared memory with coalesced loads, and each thread reads them back as broadcasts.
// u, dt and z: U steps' loads issued before their arithmetic (they do not depend on the state, so
// their latency overlaps).
// Grid: (channel tiles of kThreads / P, B). u, dt, z, out [B, T, D]; B, C [B, T, N]; s0, sT [B, D, N];
// kept [B, ceil(T / kKeepEvery), D, N].
template <typename T, int P>
__global__ void __launch_bounds__(kThreads, P == 1 ? kForwardBlocksPerSM : 1) forward_kernel(const __grid_constant__ ScanArgs a, T* __restrict__ out, float* __restrict__ sT,
                                                           float* __restrict__ kept) {
  constexpr int S = kForwardStates, NP = P * S, U = 4;
  static_assert(kStage % U == 0, "staging rounds are whole step groups");
  static_assert(kKeepEvery % U == 0, "the kept states fall on the first step of a group");
  __shared__ __align__(16) float sB[kStage][NP];
  __shared__ __align__(16) float sC[kStage][NP];
  const Channel<T, P, S> c(a);
  float h[S];
#pragma unroll
  for (int s = 0; s < S; ++s) h[s] = a.s0 && c.has(s) ? a.s0[c.state_at(s)] : 0.f;
  const int64_t chunks = (a.T + kKeepEvery - 1) / kKeepEvery;  // kept_chunks(T)
  for (int64_t t0 = 0; t0 < a.T; t0 += kStage) {
    __syncthreads();  // the previous round's reads are done
    stage_BC<T, NP>(a, c.b, t0, kStage, sB, sC);
    __syncthreads();
    const int steps = static_cast<int>(min(static_cast<int64_t>(kStage), a.T - t0));
    for (int i0 = 0; i0 < steps; i0 += U) {
      const int64_t tg = t0 + i0;
      if (kept && tg % kKeepEvery == 0) {
        float* k = kept + (c.b * chunks + tg / kKeepEvery) * a.D * a.N;  // the [D, N] slice of (b, chunk)
#pragma unroll
        for (int s = 0; s < S; ++s)
          if (c.has(s)) k[c.in_slice(s)] = h[s];
      }
      // Every load of the group is issued before the first use of any (one memory latency per group).
      float uk[U], dk[U], zk[U];
#pragma unroll
      for (int i = 0; i < U; ++i) {
        const int64_t t = min(tg + i, a.T - 1);
        uk[i] = c.u(t);
        dk[i] = c.dt(t);
        zk[i] = c.z(t);
      }
#pragma unroll
      for (int i = 0; i < U; ++i) {
        if (i0 + i >= steps) break;
        const float dl = c.delta(dk[i]);
        const float gate = a.z ? zk[i] * sigmoid(zk[i]) : 1.f;
        float Bs[S], Cs[S];
        read_staged<S>(&sB[i0 + i][c.p * S], Bs);
        read_staged<S>(&sC[i0 + i][c.p * S], Cs);
        c.step(h, dl, dl * uk[i], Bs);
        float y = 0.f;
#pragma unroll
        for (int s = 0; s < S; ++s) y += Cs[s] * h[s];
        y = (sum_channel<P>(y) + c.Dv * uk[i]) * gate;
        if (c.p == 0 && c.active) st(out + c.row(tg + i) * a.D + c.d, y);
      }
    }
  }
#pragma unroll
  for (int s = 0; s < S; ++s)
    if (c.has(s)) sT[c.state_at(s)] = h[s];
}

template <typename T, int P>
cudaError_t launch_forward(const ScanArgs& a, void* out, float* sT, float* kept, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>((a.D + kThreads / P - 1) / (kThreads / P)), static_cast<unsigned>(a.B));
  forward_kernel<T, P><<<grid, kThreads, 0, stream>>>(a, static_cast<T*>(out), sT, kept);
  return cudaGetLastError();
}

// ---- backward -----------------------------------------------------------------------------------
__host__ __device__ constexpr int ilog2(int x) { return x > 1 ? 1 + ilog2(x / 2) : 0; }

// Sums v (per lane: kS values for dB, then kS for dC, of states p * kS + s) over the warp's channels
// (the lanes with the same p) and stores the warp's 2 kS P sums at out[j * P + p]. A reduce-scatter:
// each of the first log2(2 kS) rounds exchanges half of the values still held (2 kS - 1 shuffles in
// all instead of 2 kS log2(32 / P)), the remaining rounds (small P) add the one value left.

template <int P, int kS>
__device__ __forceinline__ void warp_sum_to(float (&v)[2 * kS], float* out) {
  constexpr int V = 2 * kS;
  constexpr int kSplits = ilog2(32 / P) < ilog2(V) ? ilog2(32 / P) : ilog2(V);  // rounds that halve the values held
  constexpr int kHeld = V >> kSplits;
  constexpr int kPlainMask = ((16 >> (kSplits - 1)) - 1) & ~(P - 1);  // lanes the plain rounds made equal
  const int lane = threadIdx.x & 31;
  int first = 0;  // the index, among the V, of what v[0] now holds
  int round = 0;
#pragma unroll
  for (int off = 16; off >= P; off >>= 1, ++round) {
    if (round < kSplits) {
      const int half = (V / 2) >> round;
      const bool upper = lane & off;
#pragma unroll
      for (int j = 0; j < half; ++j) {
        const float send = upper ? v[j] : v[j + half], keep = upper ? v[j + half] : v[j];
        v[j] = keep + __shfl_xor_sync(0xffffffffu, send, off);
      }
      if (upper) first += half;
    } else {
      v[0] += __shfl_xor_sync(0xffffffffu, v[0], off);
    }
  }
  if ((lane & kPlainMask) == 0) {
#pragma unroll
    for (int j = 0; j < kHeld; ++j) out[(first + j) * P + lane % P] = v[j];
  }
}

// Per thread, newest chunk first: the kept state -> the kSub sub-chunk entry states (shared memory,
// each thread its own) -> per sub-chunk, newest first, its kQ states in registers -> kQ reverse
// steps of the gradient recurrence
//   G_t = dL/ds_t = G_{t+1} exp(delta_{t+1} A) + C_t dy_t,
// writing du, ddt, dz per token, dB / dC per (token, tile of channels) and accumulating dA, dD,
// dbias per thread. Fuses the gate's and softplus's backward and y's recomputation.
// Grid: (channel tiles, B), as the forward. Shapes of the gradients: ScanGrads (selective_scan_cuda.h).
template <typename T, int P, int kS, int kQ>
__global__ void __launch_bounds__(kThreads, kBackwardBlocksPerSM) backward_kernel(const __grid_constant__ ScanArgs a, const float* __restrict__ kept, ScanGrads g) {
  constexpr int kSub = kKeepEvery / kQ;  // sub-chunks per kept chunk
  static_assert(kKeepEvery % kQ == 0, "kept chunks are whole sub-chunks");
  __shared__ float part[kQ][kWarps][2 * kS * P];  // dB / dC per step and warp, summed over its channels
  __shared__ float sub[kSub][kS][kThreads];       // sub-chunk entry states, each thread its own column
  constexpr int NP = kS * P;
  __shared__ __align__(16) float sB[kQ][NP];  // the sub-chunk's B and C (stage_BC)
  __shared__ __align__(16) float sC[kQ][NP];
  const Channel<T, P, kS> c(a);
  const int warp = threadIdx.x / 32;
  const int64_t chunks = (a.T + kKeepEvery - 1) / kKeepEvery;  // kept_chunks(T)
  float G[kS], dA[kS], dD = 0.f, dbias = 0.f;
#pragma unroll
  for (int s = 0; s < kS; ++s) {
    G[s] = g.dsT && c.has(s) ? g.dsT[c.state_at(s)] : 0.f;
    dA[s] = 0.f;
  }
  for (int64_t ck = chunks - 1; ck >= 0; --ck) {
    const int64_t t0 = ck * kKeepEvery;
    {
      float h[kS];
      const float* k = kept + (c.b * chunks + ck) * a.D * a.N;
#pragma unroll
      for (int s = 0; s < kS; ++s) h[s] = c.has(s) ? k[c.in_slice(s)] : 0.f;
      for (int j = 0; j < kSub; ++j) {
#pragma unroll
        for (int s = 0; s < kS; ++s) sub[j][s][threadIdx.x] = h[s];
        if (j + 1 == kSub || t0 + (j + 1) * kQ >= a.T) break;
        __syncthreads();  // the previous reads of sB / sC are done
        stage_BC<T, NP>(a, c.b, t0 + j * kQ, kQ, sB, sC);
        __syncthreads();
        for (int i0 = 0; i0 < kQ; i0 += 4) {
          const int64_t tg = t0 + j * kQ + i0;
          if (tg >= a.T) break;
          Split<P, 4> delta, du;
#pragma unroll
          for (int k = 0; k < Split<P, 4>::K; ++k) {
            const int64_t t = min(tg + Split<P, 4>::step(k), a.T - 1);
            delta.v[k] = c.dt(t);
            du.v[k] = c.u(t);
          }
          float B[4][kS];
#pragma unroll
          for (int i = 0; i < 4; ++i) read_staged<kS>(&sB[i0 + i][c.p * kS], B[i]);
#pragma unroll
          for (int k = 0; k < Split<P, 4>::K; ++k) {
            delta.v[k] = c.delta(delta.v[k]);
            du.v[k] *= delta.v[k];
          }
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            if (tg + i >= a.T) break;
            c.step(h, delta.at(i), du.at(i), B[i]);
          }
        }
      }
    }
    for (int j = kSub - 1; j >= 0; --j) {
      const int64_t ts = t0 + j * kQ;
      if (ts >= a.T) continue;  // block-uniform
      __syncthreads();  // the previous reads of sB / sC are done
      stage_BC<T, NP>(a, c.b, ts, kQ, sB, sC);
      __syncthreads();
      float hs[kQ + 1][kS];  // hs[i + 1]: the state after step ts + i; hs[0] the one entering
#pragma unroll
      for (int s = 0; s < kS; ++s) hs[0][s] = sub[j][s][threadIdx.x];
      // The sub-chunk's per-channel scalars, once per channel (Split).
      Split<P, kQ> delta, u, dsp, dout, z;
#pragma unroll
      for (int k = 0; k < Split<P, kQ>::K; ++k) {  // the loads first, then the arithmetic
        const int64_t t = min(ts + Split<P, kQ>::step(k), a.T - 1);
        delta.v[k] = c.dt(t);
        u.v[k] = c.u(t);
        dout.v[k] = c.active ? ld(static_cast<const T*>(g.dout) + c.row(t) * g.dout_row + c.d) : 0.f;
        z.v[k] = c.z(t);
      }
#pragma unroll
      for (int k = 0; k < Split<P, kQ>::K; ++k) {
        const float dt = delta.v[k], x = dt + c.bias;
        delta.v[k] = a.softplus ? softplus(x) : dt;
        dsp.v[k] = a.softplus ? sigmoid(x) : 1.f;
      }
#pragma unroll
      for (int i = 0; i < kQ; ++i) {
#pragma unroll
        for (int s = 0; s < kS; ++s) hs[i + 1][s] = hs[i][s];
        const int64_t t = ts + i;
        if (t < a.T) {
          float B[kS];
          read_staged<kS>(&sB[i][c.p * kS], B);
          const float dl = delta.at(i);
          c.step(hs[i + 1], dl, dl * u.at(i), B);
        }
      }
#pragma unroll
      for (int i = kQ - 1; i >= 0; --i) {
        const int64_t t = ts + i;
        float v[2 * kS];
#pragma unroll
        for (int s = 0; s < 2 * kS; ++s) v[s] = 0.f;
        if (t < a.T) {
          const float ui = u.at(i), dl = delta.at(i), dspi = dsp.at(i), douti = dout.at(i), zi = z.at(i);
          float B[kS], C[kS];
          read_staged<kS>(&sB[i][c.p * kS], B);
          read_staged<kS>(&sC[i][c.p * kS], C);
          float dy = douti;  // dL/d(C . s + D u)
          if (a.z) {
            float y = 0.f;
#pragma unroll
            for (int s = 0; s < kS; ++s) y += C[s] * hs[i + 1][s];
            y = sum_channel<P>(y) + c.Dv * ui;
            const float sg = sigmoid(zi);
            dy = douti * zi * sg;
            if (c.p == 0 && c.active)
              st(static_cast<T*>(g.dz) + c.row(t) * a.D + c.d, douti * y * sg * (1.f + zi * (1.f - sg)));
          }
          dD += dy * ui;
          float ddu = 0.f, ddl = 0.f;  // dL/d(delta u) and the decay's part of dL/d(delta)
#pragma unroll
          for (int s = 0; s < kS; ++s) {
            const float decay = exp2f(dl * c.A2[s]);
            const float gs = G[s] + C[s] * dy;
            v[s] = gs * dl * ui;
            v[kS + s] = hs[i + 1][s] * dy;
            ddu += gs * B[s];
            const float gla = gs * hs[i][s] * decay;
            ddl += gla * c.A[s];
            dA[s] += gla * dl;
            G[s] = decay * gs;
          }
          ddu = sum_channel<P>(ddu);
          ddl = sum_channel<P>(ddl);
          const float ddt = (ddu * ui + ddl) * dspi;
          dbias += ddt;
          if (c.p == 0 && c.active) {
            st(static_cast<T*>(g.du) + c.row(t) * a.D + c.d, dy * c.Dv + ddu * dl);
            st(static_cast<T*>(g.ddt) + c.row(t) * a.D + c.d, ddt);
          }
        }
        warp_sum_to<P, kS>(v, part[i][warp]);
      }
      __syncthreads();
      // The block's dB / dC for these kQ steps: sum over warps, one partial per tile of channels.
      for (int idx = threadIdx.x; idx < kQ * 2 * kS * P; idx += kThreads) {
        const int i = idx / (2 * kS * P), slot = idx % (2 * kS * P), jv = slot / P, p = slot % P;
        const int64_t t = ts + i, n = p * kS + (jv % kS);
        if (t >= a.T || n >= a.N) continue;
        float sum = 0.f;
#pragma unroll
        for (int w = 0; w < kWarps; ++w) sum += part[i][w][slot];
        float* dst = jv < kS ? g.dB : g.dC;
        dst[((static_cast<int64_t>(blockIdx.x) * a.B + c.b) * a.T + t) * a.N + n] = sum;
      }
      __syncthreads();
    }
  }
#pragma unroll
  for (int s = 0; s < kS; ++s) {
    if (!c.has(s)) continue;
    g.ds0[c.state_at(s)] = G[s];
    g.dA[c.state_at(s)] = dA[s];
  }
  if (c.p == 0 && c.active) {
    if (g.dDskip) g.dDskip[c.b * a.D + c.d] = dD;
    if (g.dbias) g.dbias[c.b * a.D + c.d] = dbias;
  }
}

template <typename T, int P, int S, int Q>
cudaError_t launch_backward(const ScanArgs& a, const float* kept, const ScanGrads& g, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(backward_tiles_old(a)), static_cast<unsigned>(a.B));
  backward_kernel<T, P, S, Q><<<grid, kThreads, 0, stream>>>(a, kept, g);
  return cudaGetLastError();
}

// Lanes per channel: the fewest powers of two whose S states each cover N.
int lanes_per_channel(int64_t N, int S) {
  int P = 1;
  while (P * S < N) P *= 2;
  return P;
}

template <typename T, typename F>
cudaError_t dispatch_lanes(int P, F&& f) {
  constexpr int kMaxLanes = static_cast<int>(kMaxState) / std::decay_t<F>::kStates;
  switch (P) {
    case 1: return f.template operator()<T, 1>();
    case 2: if constexpr (kMaxLanes >= 2) return f.template operator()<T, 2>(); break;
    case 4: if constexpr (kMaxLanes >= 4) return f.template operator()<T, 4>(); break;
    case 8: if constexpr (kMaxLanes >= 8) return f.template operator()<T, 8>(); break;
    case 16: if constexpr (kMaxLanes >= 16) return f.template operator()<T, 16>(); break;
  }
  return cudaErrorInvalidValue;  // N > kMaxState: the glue says so before calling
}

// F::kStates: the kernel's states per thread.
template <typename F>
cudaError_t dispatch(const ScanArgs& a, F&& f) {
  if (a.N < 1 || a.N > kMaxState || a.B < 1 || a.T < 1 || a.D < 1) return cudaErrorInvalidValue;
  const int P = lanes_per_channel(a.N, std::decay_t<F>::kStates);
  return a.dtype == DType::BF16 ? dispatch_lanes<__nv_bfloat16>(P, f) : dispatch_lanes<float>(P, f);
}

struct Forward {
  static constexpr int kStates = kForwardStates;
  const ScanArgs& a;
  void* out;
  float *sT, *kept;
  cudaStream_t stream;
  template <typename T, int P>
  cudaError_t operator()() const { return launch_forward<T, P>(a, out, sT, kept, stream); }
};

template <int S, int Q>
struct Backward {
  static constexpr int kStates = S;
  const ScanArgs& a;
  const float* kept;
  const ScanGrads& g;
  cudaStream_t stream;
  template <typename T, int P>
  cudaError_t operator()() const { return launch_backward<T, P, S, Q>(a, kept, g, stream); }
};


}  // namespace

int64_t backward_tiles_old(const ScanArgs& a) {
  const int64_t channels = kThreads / lanes_per_channel(a.N, kBackwardStates);
  return (a.D + channels - 1) / channels;
}

cudaError_t scan_forward(const ScanArgs& a, void* out, float* sT, float* kept, cudaStream_t stream) {
  return dispatch(a, Forward{a, out, sT, kept, stream});
}

cudaError_t scan_backward_old(const ScanArgs& a, const float* kept, const ScanGrads& g, cudaStream_t stream) {
  return dispatch(a, Backward<kBackwardStates, kBackwardSteps>{a, kept, g, stream});
}

}  // namespace cuda
}  // namespace mamba
}  // namespace linearnexus
