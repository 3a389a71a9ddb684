// The selective scan's forward on CUDA: the fused CPU kernel's design (selective_scan.cpp) moved to
// the GPU. Launchers declared in selective_scan_cuda.h; shapes and the math are there. The backward,
// parallel over time, is selective_scan_bwd.cu.
//
// Why one kernel and not tensor ops: Mamba-1's decay exp(delta A) differs per (channel, state), so
// the scan has no matmul form, and any batched-op form moves [B, T, D, N] tensors through memory
// (~5 flops per element); the chunked op path launched ~150,000 kernels per training step. Here
// a thread owns S states of one channel and walks along time with them in registers (16: one thread
// per channel up to d_state 16); past that, the P = ceil(N / S) threads of a channel are adjacent
// lanes and sum C . s with shuffles. B_t and C_t are shared by every channel of a block (one batch
// row) and staged in shared memory. Every input is read once and the output written once, already
// gated: softplus(dt + bias), the D skip and the SiLU(z) gate are fused in, so none of delta, y or
// y * silu(z) exists in memory. For a backward it keeps the states entering each kKeepEvery-token
// chunk, from which the backward recomputes the rest.
#include <cuda_bf16.h>

#include <type_traits>

#include "scan_math.cuh"
#include "selective_scan_cuda.h"

namespace linearnexus {
namespace mamba {
namespace cuda {
namespace {

constexpr int kThreads = 128;  // threads per block: kThreads / P channels of one batch row
// States per thread (n = p * S + s). 16, so at d_state 16 one thread is one channel: the per-step
// scalars (softplus, the gate, the loads of u, dt, z) are computed once per channel, no shuffle sums
// C . s, and the 16 independent state updates are the instruction-level parallelism that hides the
// latency along time.
constexpr int kForwardStates = 16;
// Forward blocks per SM the registers must allow at one lane per channel (<= 80 registers a thread,
// no spills at d_state <= 16): at mamba-small's size (B 64, d_inner 1536: 768 blocks) 6 a SM put every
// block of the grid in one wave on 132 SMs.
constexpr int kForwardBlocksPerSM = 6;
constexpr int kStage = 32;  // steps whose B and C the forward stages in shared memory

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

// Stages B and C of `rows` steps from t0 in shared memory as fp32 (zeros past T and past N). Every
// channel of a block is of one batch row and reads the same B_t and C_t: coalesced loads once per
// block instead of scalar loads per lane and step, read back as broadcasts.
template <typename T, int NP>
__device__ __forceinline__ void stage_BC(const ScanArgs& a, int64_t b, int64_t t0, int rows, float (*sB)[NP],
                                         float (*sC)[NP]) {
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
__global__ void __launch_bounds__(kThreads, P == 1 ? kForwardBlocksPerSM : 1)
    forward_kernel(const __grid_constant__ ScanArgs a, T* __restrict__ out, float* __restrict__ sT,
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
    case 1:
      return f.template operator()<T, 1>();
    case 2:
      if constexpr (kMaxLanes >= 2) return f.template operator()<T, 2>();
      break;
    case 4:
      if constexpr (kMaxLanes >= 4) return f.template operator()<T, 4>();
      break;
    case 8:
      if constexpr (kMaxLanes >= 8) return f.template operator()<T, 8>();
      break;
    case 16:
      if constexpr (kMaxLanes >= 16) return f.template operator()<T, 16>();
      break;
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
  cudaError_t operator()() const {
    return launch_forward<T, P>(a, out, sT, kept, stream);
  }
};

}  // namespace

cudaError_t scan_forward(const ScanArgs& a, void* out, float* sT, float* kept, cudaStream_t stream) {
  return dispatch(a, Forward{a, out, sT, kept, stream});
}

}  // namespace cuda
}  // namespace mamba
}  // namespace linearnexus
