// SwiGLU's gate, forward and backward (launchers and contract in kernels.h).
//
// Why: silu(gate) * up as ops is two kernels forward (silu, multiply) with silu(gate) kept for
// backward, and four backward (two multiplies, silu's backward, and the products' grads), each a
// pass over [B*T, hidden] values. Here forward reads gate and up once and writes out once; backward
// reads gate, up and dout once and writes both gradients once, recomputing the sigmoid.
#include <cuda_bf16.h>

#include "device_io.cuh"
#include "kernels.h"

namespace linearnexus {
namespace cuda {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void swiglu_forward_kernel(const T* __restrict__ gate, const T* __restrict__ up, T* __restrict__ out,
                                      int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    const float g = ld(gate + i);
    st(out + i, g / (1.f + __expf(-g)) * ld(up + i));
  }
}

template <typename T>
__global__ void swiglu_backward_kernel(const T* __restrict__ gate, const T* __restrict__ up, const T* __restrict__ dout,
                                       T* __restrict__ dgate, T* __restrict__ dup, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    const float g = ld(gate + i), u = ld(up + i), d = ld(dout + i);
    const float sig = 1.f / (1.f + __expf(-g));
    st(dup + i, d * g * sig);
    st(dgate + i, d * u * sig * (1.f + g * (1.f - sig)));  // d silu(g) / dg
  }
}

unsigned blocks_for(int64_t n) {
  return static_cast<unsigned>(std::min<int64_t>((n + kThreads - 1) / kThreads, int64_t{1} << 20));
}

}  // namespace

cudaError_t swiglu_forward(const void* gate, const void* up, void* out, DType dtype, int64_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  if (dtype == DType::BF16)
    swiglu_forward_kernel<<<blocks_for(n), kThreads, 0, stream>>>(static_cast<const __nv_bfloat16*>(gate),
                                                                  static_cast<const __nv_bfloat16*>(up),
                                                                  static_cast<__nv_bfloat16*>(out), n);
  else
    swiglu_forward_kernel<<<blocks_for(n), kThreads, 0, stream>>>(
        static_cast<const float*>(gate), static_cast<const float*>(up), static_cast<float*>(out), n);
  return cudaGetLastError();
}

cudaError_t swiglu_backward(const void* gate, const void* up, const void* dout, void* dgate, void* dup, DType dtype,
                            int64_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  if (dtype == DType::BF16)
    swiglu_backward_kernel<<<blocks_for(n), kThreads, 0, stream>>>(
        static_cast<const __nv_bfloat16*>(gate), static_cast<const __nv_bfloat16*>(up),
        static_cast<const __nv_bfloat16*>(dout), static_cast<__nv_bfloat16*>(dgate), static_cast<__nv_bfloat16*>(dup),
        n);
  else
    swiglu_backward_kernel<<<blocks_for(n), kThreads, 0, stream>>>(
        static_cast<const float*>(gate), static_cast<const float*>(up), static_cast<const float*>(dout),
        static_cast<float*>(dgate), static_cast<float*>(dup), n);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace linearnexus
