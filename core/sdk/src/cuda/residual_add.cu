// The residual stream's add of a block output, out = a + b with a fp32 (the stream) and b in the
// compute dtype (launcher and contract in kernels.h).
//
// Why: ATen adds an fp32 and a bf16 tensor through its dynamic-casting elementwise path (unrolled,
// scalar loads per element): 3.3 ms for gpt-small's 12 `h + mlp(ln2(h))` adds, ~1.8 TB/s. Here each
// thread adds 4 values with one 16-byte (a, out) and one 8-byte (b, bf16) access; a scalar
// grid-stride loop where n % 4 != 0 or a pointer is not aligned.
#include <cuda_bf16.h>

#include <algorithm>

#include "device_io.cuh"
#include "kernels.h"

namespace linearnexus {
namespace cuda {
namespace {

constexpr int kThreads = 256;

// a, out: [n] (A); b: [n] (B); 4 values per thread
template <typename A, typename B>
__global__ void __launch_bounds__(kThreads)
    residual_add_vec_kernel(const A* __restrict__ a, const B* __restrict__ b, A* __restrict__ out, int64_t n4) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x; i < n4;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    float x[4], y[4];
    Pack4<A>::load(a + 4 * i, x);
    Pack4<B>::load(b + 4 * i, y);
#pragma unroll
    for (int e = 0; e < 4; ++e) x[e] += y[e];
    Pack4<A>::store(out + 4 * i, x);
  }
}

template <typename A, typename B>
__global__ void __launch_bounds__(kThreads)
    residual_add_kernel(const A* __restrict__ a, const B* __restrict__ b, A* __restrict__ out, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * kThreads)
    st(out + i, ld(a + i) + ld(b + i));
}

template <typename A, typename B>
cudaError_t launch(const void* a, const void* b, void* out, int64_t n, cudaStream_t stream) {
  const bool vec = n % 4 == 0 && aligned16(a) && aligned16(b) && aligned16(out);
  const int64_t items = vec ? n / 4 : n;
  const int64_t blocks = std::min<int64_t>((items + kThreads - 1) / kThreads, int64_t{1} << 20);
  if (vec)
    residual_add_vec_kernel<A, B><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
        static_cast<const A*>(a), static_cast<const B*>(b), static_cast<A*>(out), items);
  else
    residual_add_kernel<A, B><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
        static_cast<const A*>(a), static_cast<const B*>(b), static_cast<A*>(out), items);
  return cudaGetLastError();
}

}  // namespace

cudaError_t residual_add(const void* a, DType a_dtype, const void* b, DType b_dtype, void* out, int64_t n,
                         cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  using bf = __nv_bfloat16;
  if (a_dtype == DType::F32 && b_dtype == DType::BF16) return launch<float, bf>(a, b, out, n, stream);
  if (a_dtype == DType::F32) return launch<float, float>(a, b, out, n, stream);
  if (b_dtype == DType::BF16) return launch<bf, bf>(a, b, out, n, stream);
  return cudaErrorInvalidValue;  // a bf16 stream plus fp32 would be fp32: the caller does not ask
}

}  // namespace cuda
}  // namespace linearnexus
