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
// The second pass takes the row from shared memory, where the first pass left it, when the row fits
// there with two blocks of 512 threads per SM (bf16 at V = 50257: 100.5 KB a row, two in Hopper's
// 228 KB): the logits are then read from global memory once and written once. Otherwise (fp32 at
// V = 50257: 201 KB a row; a larger vocabulary; a smaller SM) the second pass reads the row from
// global memory again, as this kernel always did (6.1 ms of a gpt-small bf16 step on an H200 then,
// issue #15). Without the gradient the row is read once anyway: the global-memory kernel then (no
// shared memory to limit its blocks per SM). The first pass keeps 4 loads in flight per thread.
#include <cuda_bf16.h>

#include <cfloat>

#include "kernels.h"

namespace linearnexus {
namespace cuda {
namespace {

constexpr int kThreads = 512;

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T>
__device__ __forceinline__ T from_f(float x);
template <>
__device__ __forceinline__ float from_f<float>(float x) { return x; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) { return __float2bfloat16(x); }

// (max, sum of exp(x - max)) pairs; -FLT_MAX with sum 0 is the empty pair (no inf - inf NaNs).
__device__ __forceinline__ void combine(float& m, float& s, float m2, float s2) {
  const float mn = fmaxf(m, m2);
  s = s * __expf(m - mn) + s2 * __expf(m2 - mn);
  m = mn;
}

constexpr int kUnroll = 4;  // 16-byte loads in flight per thread in the first pass

// kRowInShared: the first pass also stores the row's vectors in dynamic shared memory ([n_vec]
// uint4, n_vec the vectors touching real columns), the loss's x[target] and the second pass read
// them there; the global row is then only written. Otherwise both read the global row, the second
// pass overwriting it as it goes. Same arithmetic, in the same order, either way.
template <typename T, bool kRowInShared>
__global__ void __launch_bounds__(kThreads, kRowInShared ? 2 : 1)
    softmax_xent_kernel(T* __restrict__ logits, int64_t V, int64_t row_stride, const int64_t* __restrict__ targets,
                        float* __restrict__ loss, bool write_grad) {
  constexpr int kVec = 16 / sizeof(T);  // elements per 16-byte load
  union Pack {
    uint4 raw;
    T v[kVec];
  };
  extern __shared__ uint4 row_shared[];  // [n_vec] with kRowInShared, else none
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
      if constexpr (kRowInShared) row_shared[i] = p[u].raw;
      const int valid = static_cast<int>(min(V - i * kVec, static_cast<int64_t>(kVec)));  // real columns, >= 1
      float vm = -FLT_MAX;
#pragma unroll
      for (int k = 0; k < kVec; ++k)
        if (k < valid) vm = fmaxf(vm, to_f(p[u].v[k]));
      float vs = 0.f;
#pragma unroll
      for (int k = 0; k < kVec; ++k)
        if (k < valid) vs += __expf(to_f(p[u].v[k]) - vm);
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
  __syncthreads();  // also makes row_shared, written by every thread, readable by all
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
        const T xt = kRowInShared ? reinterpret_cast<const T*>(row_shared)[target] : x[target];
        loss[row] = lse - to_f(xt);
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
    if (i < n_vec) p.raw = kRowInShared ? row_shared[i] : reinterpret_cast<const uint4*>(x)[i];
    // Columns i * kVec + k: real for k < valid (0 in the padding or without loss), the target at k == tk.
    const int64_t first = i * kVec;
    const int valid = target >= 0 ? static_cast<int>(max(min(V - first, static_cast<int64_t>(kVec)), int64_t{0})) : 0;
    const int tk = target >= first && target < first + kVec ? static_cast<int>(target - first) : -1;
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      float g = 0.f;
      if (k < valid) g = __expf(to_f(p.v[k]) - lse) - (k == tk ? 1.f : 0.f);
      p.v[k] = from_f<T>(g);
    }
    reinterpret_cast<uint4*>(x)[i] = p.raw;
  }
}

// Whether `kernel` (a kRowInShared one) can keep `bytes` of row in shared memory with at least two
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
    const cudaError_t e = row_fits_in_shared(softmax_xent_kernel<T, true>, bytes, &fits);
    if (e != cudaSuccess) return e;
    if (fits) {
      softmax_xent_kernel<T, true><<<grid, kThreads, bytes, stream>>>(x, V, row_stride, targets, loss, write_grad);
      return cudaGetLastError();
    }
  }
  softmax_xent_kernel<T, false><<<grid, kThreads, 0, stream>>>(x, V, row_stride, targets, loss, write_grad);
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
