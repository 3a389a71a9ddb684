// Softmax cross-entropy over rows of LM-head logits, with the gradient written over the logits in the
// same kernel (launcher and contract in kernels.h; the chunked head that calls it is loss.cpp).
//
// Why: the unfused path (matmul -> cast the bf16 logits to fp32 -> log_softmax -> nll, then the same
// backwards) keeps fp32 [B*T, V] logits, their log-softmax and their gradient (~13 GB each at B=64,
// T=1024, V=50257) and makes ~6 full passes over them: 25 ms of log_softmax fwd/bwd plus most of the
// 34.5 ms of dtype casts in a gpt-small step (docs/benchmarks.md). Here one block owns one row: a
// first pass reads it once (16-byte loads, online max / sum of exponentials in fp32) and a second
// writes softmax - onehot in the logits' own dtype, which the caller multiplies straight into the
// head's two gradient matmuls. Nothing fp32 of size [N, V].
// Where the row fits in shared memory with two blocks of 512 threads per SM (bf16 at V = 50257:
// 100.5 KB a row, two in Hopper's 228 KB; softmax_xent_shared_kernel), it is read from global memory
// once and written once, and the three sweeps (max, sum of exponentials, gradient) run over shared
// memory. That kernel was instruction-bound before (Nsight Compute, H200: 79% issue slots busy, the
// ALU pipe at 67% from bf16 unpacking, per-element bound checks and the online max's extra
// exponentials; 6.3 ms a gpt-small step), so its sweeps do the least per element: a packed bf16x2
// max, one exp2 per element and pass, bound and target checks only in the vectors that need them
// (3.6 ms a step since; with the two-read kernel in its place the whole step is 2.2 ms slower).
// Otherwise (fp32 at V = 50257: 201 KB a row; a larger vocabulary; without the gradient, where the
// row is read once anyway) softmax_xent_kernel reads the row from global memory in both passes.
#include <cuda_bf16.h>

#include <cfloat>

#include "device_io.cuh"
#include "kernels.h"

namespace linearnexus {
namespace cuda {
namespace {

constexpr int kThreads = 512;

// (max, sum of exp(x - max)) pairs; -FLT_MAX with sum 0 is the empty pair (no inf - inf NaNs).
__device__ __forceinline__ void combine(float& m, float& s, float m2, float s2) {
  const float mn = fmaxf(m, m2);
  s = s * __expf(m - mn) + s2 * __expf(m2 - mn);
  m = mn;
}

constexpr int kUnroll = 4;  // 16-byte loads in flight per thread in the first pass

// Both passes read the global row (the second again: a 100 KB row is not kept in L2), the second
// overwriting it with the gradient as it goes.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    softmax_xent_kernel(T* __restrict__ logits, int64_t V, int64_t row_stride, const int64_t* __restrict__ targets,
                        float* __restrict__ loss, bool write_grad) {
  constexpr int kVec = 16 / sizeof(T);  // elements per 16-byte load
  union Pack {
    uint4 raw;
    T v[kVec];
  };
  const int64_t row = blockIdx.x;
  T* x = logits + row * row_stride;
  const int64_t target = targets[row];
  const int64_t n_vec = (V + kVec - 1) / kVec;  // vectors touching real columns (row_stride >= n_vec * kVec)

  // Pass 1: this thread's (max, sum) over its vectors i = threadIdx.x + j * kThreads, in order of j;
  // kUnroll of them loaded before any is used.
  float m = -FLT_MAX, s = 0.f;
  for (int64_t i0 = threadIdx.x; i0 < n_vec; i0 += static_cast<int64_t>(kThreads) * kUnroll) {
    Pack p[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = i0 + u * kThreads;
      if (i < n_vec) p[u].raw = reinterpret_cast<const uint4*>(x)[i];
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = i0 + u * kThreads;
      if (i >= n_vec) break;
      const int valid = static_cast<int>(min(V - i * kVec, static_cast<int64_t>(kVec)));  // real columns, >= 1
      float vm = -FLT_MAX;
#pragma unroll
      for (int k = 0; k < kVec; ++k)
        if (k < valid) vm = fmaxf(vm, ld(&p[u].v[k]));
      float vs = 0.f;
#pragma unroll
      for (int k = 0; k < kVec; ++k)
        if (k < valid) vs += __expf(ld(&p[u].v[k]) - vm);
      combine(m, s, vm, vs);
    }
  }
  // Block reduction: warps by shuffles, then the warps' pairs through shared memory.
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    const float m2 = __shfl_xor_sync(0xffffffffu, m, off), s2 = __shfl_xor_sync(0xffffffffu, s, off);
    combine(m, s, m2, s2);
  }
  __shared__ float sm[kThreads / 32], ss[kThreads / 32];
  __shared__ float lse_shared;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) sm[warp] = m, ss[warp] = s;
  __syncthreads();
  if (warp == 0) {
    m = lane < kThreads / 32 ? sm[lane] : -FLT_MAX;
    s = lane < kThreads / 32 ? ss[lane] : 0.f;
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
      const float m2 = __shfl_xor_sync(0xffffffffu, m, off), s2 = __shfl_xor_sync(0xffffffffu, s, off);
      combine(m, s, m2, s2);
    }
    if (lane == 0) {
      const float lse = m + logf(s);
      lse_shared = lse;
      if (target < 0) {
        loss[row] = 0.f;
      } else {
        // Read before pass 2 overwrites the global row (behind the barrier below).
        loss[row] = lse - ld(x + target);
      }
    }
  }
  __syncthreads();
  if (!write_grad) return;

  // Pass 2: softmax - onehot over the real columns, zeros in the padding and on rows without loss.
  const float lse = lse_shared;
  const int64_t n_all = row_stride / kVec;
  for (int64_t i = threadIdx.x; i < n_all; i += kThreads) {
    Pack p;
    if (i < n_vec) p.raw = reinterpret_cast<const uint4*>(x)[i];
    // Columns i * kVec + k: real for k < valid (0 in the padding or without loss), the target at k == tk.
    const int64_t first = i * kVec;
    const int valid = target >= 0 ? static_cast<int>(max(min(V - first, static_cast<int64_t>(kVec)), int64_t{0})) : 0;
    const int tk = target >= first && target < first + kVec ? static_cast<int>(target - first) : -1;
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      float g = 0.f;
      if (k < valid) g = __expf(ld(&p.v[k]) - lse) - (k == tk ? 1.f : 0.f);
      st(&p.v[k], g);
    }
    reinterpret_cast<uint4*>(x)[i] = p.raw;
  }
}

// ---- The row held in shared memory ---------------------------------------------------------------

// exp2 on the MUFU unit (relative error ~2^-22), for exp(x - c) as exp2(x log2e - c log2e): one FFMA
// and one MUFU per element.
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}
constexpr float kLog2e = 1.4426950408889634f;

// A 16-byte vector of T as fp32 values (bf16: a shift or a mask per value, no conversion
// instruction), its largest value, and fp32 values packed back.
template <typename T>
struct RowVec;

template <>
struct RowVec<float> {
  static constexpr int N = 4;
  __device__ __forceinline__ static float get(const uint4& r, int k) { return __uint_as_float((&r.x)[k]); }
  __device__ __forceinline__ static float max_all(const uint4& r) {
    return fmaxf(fmaxf(get(r, 0), get(r, 1)), fmaxf(get(r, 2), get(r, 3)));
  }
  __device__ __forceinline__ static uint4 pack(const float (&g)[N]) {
    return make_uint4(__float_as_uint(g[0]), __float_as_uint(g[1]), __float_as_uint(g[2]), __float_as_uint(g[3]));
  }
};

template <>
struct RowVec<__nv_bfloat16> {
  static constexpr int N = 8;
  __device__ __forceinline__ static float get(const uint4& r, int k) {
    const uint32_t w = (&r.x)[k / 2];  // little-endian: value 2j in the low half of word j
    return __uint_as_float(k % 2 ? (w & 0xffff0000u) : (w << 16));
  }
  __device__ __forceinline__ static __nv_bfloat162 half2(uint32_t w) {
    __nv_bfloat162 h;
    memcpy(&h, &w, sizeof(w));
    return h;
  }
  __device__ __forceinline__ static float max_all(const uint4& r) {  // three packed max, one fp32 max
    const __nv_bfloat162 m = __hmax2(__hmax2(half2(r.x), half2(r.y)), __hmax2(half2(r.z), half2(r.w)));
    return fmaxf(__low2float(m), __high2float(m));
  }
  __device__ __forceinline__ static uint4 pack(const float (&g)[N]) {
    uint4 r;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const __nv_bfloat162 h = __floats2bfloat162_rn(g[2 * j], g[2 * j + 1]);
      memcpy(&(&r.x)[j], &h, sizeof(h));
    }
    return r;
  }
};

// The block's max (kMax) or sum of v, returned to every thread; `scratch` holds kThreads / 32 floats
// and is free again when this returns.
template <bool kMax>
__device__ __forceinline__ float block_reduce(float v, float* scratch) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    const float o = __shfl_xor_sync(0xffffffffu, v, off);
    v = kMax ? fmaxf(v, o) : v + o;
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < kThreads / 32 ? scratch[lane] : (kMax ? -FLT_MAX : 0.f);
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    const float o = __shfl_xor_sync(0xffffffffu, v, off);
    v = kMax ? fmaxf(v, o) : v + o;
  }
  __syncthreads();  // every warp has read scratch before anyone writes it again
  return v;
}

// One block per row, the row's n_vec vectors (those touching real columns) in dynamic shared memory:
// sweep 1 copies them there from global memory and takes the max (packed); sweep 2 sums
// exp(x - max) from shared memory; sweep 3 writes softmax - onehot from shared memory over the
// global row (zeros in the padding columns and on rows without loss). Only the last vector can hold
// columns >= V and only one holds the target: the element-wise checks run there alone.
template <typename T>
__global__ void __launch_bounds__(kThreads, 2)
    softmax_xent_shared_kernel(T* __restrict__ logits, int64_t V, int64_t row_stride,
                               const int64_t* __restrict__ targets, float* __restrict__ loss) {
  using RV = RowVec<T>;
  constexpr int kVec = RV::N;
  extern __shared__ uint4 row[];  // [n_vec]
  __shared__ float scratch[kThreads / 32];
  uint4* x = reinterpret_cast<uint4*>(logits + blockIdx.x * row_stride);
  const int64_t target = targets[blockIdx.x];
  const int n_vec = static_cast<int>((V + kVec - 1) / kVec), n_all = static_cast<int>(row_stride / kVec);
  const int last_valid =
      static_cast<int>(V - static_cast<int64_t>(n_vec - 1) * kVec);  // real values in the last vector

  // Sweep 1: global -> shared, and the max. kUnroll loads in flight per thread.
  float m = -FLT_MAX;
  for (int i0 = threadIdx.x; i0 < n_vec; i0 += kThreads * kUnroll) {
    uint4 p[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u)
      if (i0 + u * kThreads < n_vec) p[u] = x[i0 + u * kThreads];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int i = i0 + u * kThreads;
      if (i >= n_vec) break;
      row[i] = p[u];
      if (i < n_vec - 1 || last_valid == kVec) {
        m = fmaxf(m, RV::max_all(p[u]));
      } else {
#pragma unroll
        for (int k = 0; k < kVec; ++k)
          if (k < last_valid) m = fmaxf(m, RV::get(p[u], k));
      }
    }
  }
  m = block_reduce<true>(m, scratch);  // its barrier also publishes `row`
  const float m2 = m * kLog2e;

  // Sweep 2: sum of exp(x - max).
  float s = 0.f;
  for (int i = threadIdx.x; i < n_vec; i += kThreads) {
    const uint4 p = row[i];
    if (i < n_vec - 1) {
#pragma unroll
      for (int k = 0; k < kVec; ++k) s += fast_exp2(fmaf(RV::get(p, k), kLog2e, -m2));
    } else {
#pragma unroll
      for (int k = 0; k < kVec; ++k)
        if (k < last_valid) s += fast_exp2(fmaf(RV::get(p, k), kLog2e, -m2));
    }
  }
  s = block_reduce<false>(s, scratch);
  const float lse = m + logf(s), lse2 = lse * kLog2e;
  if (threadIdx.x == 0) loss[blockIdx.x] = target >= 0 ? lse - ld(reinterpret_cast<const T*>(row) + target) : 0.f;

  // Sweep 3: the gradient over the global row.
  const int t_vec = target >= 0 ? static_cast<int>(target / kVec) : -1, t_k = static_cast<int>(target % kVec);
  for (int i = threadIdx.x; i < n_all; i += kThreads) {
    float g[kVec];
    if (target < 0 || i >= n_vec) {
#pragma unroll
      for (int k = 0; k < kVec; ++k) g[k] = 0.f;
    } else {
      const uint4 p = row[i];
#pragma unroll
      for (int k = 0; k < kVec; ++k) g[k] = fast_exp2(fmaf(RV::get(p, k), kLog2e, -lse2));
      if (i == t_vec || i == n_vec - 1) {  // the target's vector, the last one: checks per value
#pragma unroll
        for (int k = 0; k < kVec; ++k) {
          if (i == t_vec && k == t_k) g[k] -= 1.f;
          if (i == n_vec - 1 && k >= last_valid) g[k] = 0.f;
        }
      }
    }
    x[i] = RV::pack(g);
  }
}

// Whether `kernel` (softmax_xent_shared_kernel) can keep `bytes` of row in shared memory with at least two
// blocks of kThreads on an SM of the current device; if so it is opted in to that much dynamic shared
// memory, with the carveout at its largest. Checks the device's limit first, so that no failing call
// leaves an error behind for the launcher's cudaGetLastError.
template <typename Kernel>
cudaError_t row_fits_in_shared(Kernel kernel, size_t bytes, bool* fits) {
  *fits = false;
  int device = 0, optin = 0;
  cudaFuncAttributes attr{};
  cudaError_t e = cudaGetDevice(&device);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (e == cudaSuccess) e = cudaFuncGetAttributes(&attr, kernel);
  if (e != cudaSuccess || bytes + attr.sharedSizeBytes > static_cast<size_t>(optin)) return e;
  e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
  if (e == cudaSuccess)
    e = cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, cudaSharedmemCarveoutMaxShared);
  int blocks = 0;
  if (e == cudaSuccess) e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, kThreads, bytes);
  *fits = e == cudaSuccess && blocks >= 2;
  return e;
}

template <typename T>
cudaError_t launch(void* logits, int64_t rows, int64_t V, int64_t row_stride, const int64_t* targets, float* loss,
                   bool write_grad, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(rows));
  T* x = static_cast<T*>(logits);
  if (write_grad) {
    constexpr int64_t kVec = 16 / sizeof(T);
    const size_t bytes = static_cast<size_t>((V + kVec - 1) / kVec) * sizeof(uint4);
    bool fits = false;
    const cudaError_t e = row_fits_in_shared(softmax_xent_shared_kernel<T>, bytes, &fits);
    if (e != cudaSuccess) return e;
    if (fits) {
      softmax_xent_shared_kernel<T><<<grid, kThreads, bytes, stream>>>(x, V, row_stride, targets, loss);
      return cudaGetLastError();
    }
  }
  softmax_xent_kernel<T><<<grid, kThreads, 0, stream>>>(x, V, row_stride, targets, loss, write_grad);
  return cudaGetLastError();
}

}  // namespace

cudaError_t softmax_cross_entropy_rows(void* logits, DType dtype, int64_t rows, int64_t V, int64_t row_stride,
                                       const int64_t* targets, float* loss, bool write_grad, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  if (row_stride % 8 != 0 || row_stride < V) return cudaErrorInvalidValue;
  if (dtype == DType::BF16)
    return launch<__nv_bfloat16>(logits, rows, V, row_stride, targets, loss, write_grad, stream);
  return launch<float>(logits, rows, V, row_stride, targets, loss, write_grad, stream);
}

}  // namespace cuda
}  // namespace linearnexus
