// Softmax cross-entropy over rows of LM-head logits, with the gradient written over the logits in the
// same kernel (launcher and contract in kernels.h; the chunked head that calls it is loss.cpp).
//
// Why: the unfused path (matmul -> cast the bf16 logits to fp32 -> log_softmax -> nll, then the same
// backwards) keeps fp32 [B*T, V] logits, their log-softmax and their gradient (~13 GB each at B=64,
// T=1024, V=50257) and makes ~6 full passes over them: 25 ms of log_softmax fwd/bwd plus most of the
// 34.5 ms of dtype casts in a gpt-small step (docs/benchmarks.md). Here one block owns one row: a
// first pass reads it once (16-byte loads, online max / sum of exponentials in fp32), a second
// reads it again (from L2: a 100 KB row) and writes softmax - onehot in the logits' own dtype, which
// the caller multiplies straight into the head's two gradient matmuls. Nothing fp32 of size [N, V].
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

template <typename T>
__global__ void __launch_bounds__(kThreads) softmax_xent_kernel(T* __restrict__ logits, int64_t V, int64_t row_stride,
                                                                 const int64_t* __restrict__ targets,
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

  // Pass 1: this thread's (max, sum) over its vectors.
  float m = -FLT_MAX, s = 0.f;
  for (int64_t i = threadIdx.x; i < n_vec; i += kThreads) {
    Pack p;
    p.raw = reinterpret_cast<const uint4*>(x)[i];
    float vm = -FLT_MAX;
#pragma unroll
    for (int k = 0; k < kVec; ++k)
      if (i * kVec + k < V) vm = fmaxf(vm, to_f(p.v[k]));
    float vs = 0.f;
#pragma unroll
    for (int k = 0; k < kVec; ++k)
      if (i * kVec + k < V) vs += __expf(to_f(p.v[k]) - vm);
    combine(m, s, vm, vs);
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
      loss[row] = target >= 0 ? lse - to_f(x[target]) : 0.f;  // read before pass 2 overwrites it
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
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      const int64_t col = i * kVec + k;
      float g = 0.f;
      if (target >= 0 && col < V) g = __expf(to_f(p.v[k]) - lse) - (col == target ? 1.f : 0.f);
      p.v[k] = from_f<T>(g);
    }
    reinterpret_cast<uint4*>(x)[i] = p.raw;
  }
}

}  // namespace

cudaError_t softmax_cross_entropy_rows(void* logits, DType dtype, int64_t rows, int64_t V, int64_t row_stride,
                                       const int64_t* targets, float* loss, bool write_grad, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  if (row_stride % 8 != 0 || row_stride < V) return cudaErrorInvalidValue;
  const dim3 grid(static_cast<unsigned>(rows));
  if (dtype == DType::BF16)
    softmax_xent_kernel<__nv_bfloat16><<<grid, kThreads, 0, stream>>>(static_cast<__nv_bfloat16*>(logits), V,
                                                                       row_stride, targets, loss, write_grad);
  else
    softmax_xent_kernel<float><<<grid, kThreads, 0, stream>>>(static_cast<float*>(logits), V, row_stride, targets,
                                                              loss, write_grad);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace linearnexus
