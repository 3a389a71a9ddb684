// One decoded token of the mamba block's causal depthwise conv + silu, the conv state updated in
// place (declared in selective_scan_cuda.h). Unfused, that token costs a cat, the weight's cast, a
// depthwise conv, a contiguous copy of the new history, a silu, a transpose copy and the state's
// copy-back: seven launches a layer that a captured decode step replays at ~2 us each, for [B, D]
// elements.
#include <cuda_bf16.h>

#include "selective_scan_cuda.h"

namespace linearnexus {
namespace mamba {
namespace cuda {
namespace {

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T>
__device__ __forceinline__ T from_f(float x);
template <>
__device__ __forceinline__ float from_f<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) {
  return __float2bfloat16(x);
}

// A thread per (b, d): window = [state[b, d, :], x[b, d]], u = silu(window . w[d] + bias[d]),
// state[b, d, :] = window[1:]. x and u: [B, D] with rows x_row apart (u contiguous); state
// [B, D, K - 1] contiguous, in x's dtype.
template <typename T>
__global__ void conv_step_kernel(ConvStepArgs a, T* u) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= a.B * a.D) return;
  const int64_t b = i / a.D, d = i % a.D;
  const int K = a.K;
  T* s = static_cast<T*>(a.state) + i * (K - 1);
  const float* w = a.weight + d * K;
  const float xin = to_f(static_cast<const T*>(a.x)[b * a.x_row + d]);
  float acc = a.bias ? a.bias[d] : 0.f;
  float prev = K > 1 ? to_f(s[0]) : xin;
  for (int k = 0; k < K - 1; ++k) {
    acc += prev * w[k];
    const float next = k + 1 < K - 1 ? to_f(s[k + 1]) : xin;
    s[k] = from_f<T>(next);  // shift left: the oldest input drops out, x comes in last
    prev = next;
  }
  acc += xin * w[K - 1];
  u[i] = from_f<T>(acc / (1.f + __expf(-acc)));
}

}  // namespace

cudaError_t conv_step(const ConvStepArgs& a, void* u, cudaStream_t stream) {
  const int threads = 256;
  const auto blocks = static_cast<unsigned>((a.B * a.D + threads - 1) / threads);
  if (a.dtype == DType::BF16)
    conv_step_kernel<__nv_bfloat16><<<blocks, threads, 0, stream>>>(a, static_cast<__nv_bfloat16*>(u));
  else
    conv_step_kernel<float><<<blocks, threads, 0, stream>>>(a, static_cast<float*>(u));
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace mamba
}  // namespace linearnexus
