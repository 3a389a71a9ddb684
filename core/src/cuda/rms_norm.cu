// RMSNorm forward and backward (launchers and contract in kernels.h).
//
// Why: the op path upcasts to fp32, runs at::rms_norm (a reduction and an elementwise pass), writes
// fp32 that autocast then casts to bf16 for the next matmul (another read and write), and its
// backward is a chain of autograd ops over [N, C] tensors. Here one warp owns one row: forward reads
// x once and writes y once, already in the compute dtype, keeping only rstd per row; backward reads
// dy and x once and writes dx once, with the weight's gradient summed per block in registers and
// written as one row of partial sums per block (the caller adds them up: deterministic).
#include <cuda_bf16.h>

#include "device_io.cuh"
#include "kernels.h"

namespace linearnexus {
namespace cuda {
namespace {

constexpr int kWarps = 8;          // rows in flight per block (one warp each)
constexpr int64_t kBackwardBlocks = 1024;

template <typename X, typename Y>
__global__ void __launch_bounds__(kWarps * 32) rms_forward_kernel(const X* __restrict__ x, const float* __restrict__ w,
                                                                  Y* __restrict__ y, float* __restrict__ rstd,
                                                                  int64_t rows, int64_t C, float eps) {
  const int lane = threadIdx.x % 32;
  for (int64_t r = blockIdx.x * static_cast<int64_t>(kWarps) + threadIdx.x / 32; r < rows;
       r += static_cast<int64_t>(gridDim.x) * kWarps) {
    const X* xr = x + r * C;
    float ss = 0.f;
    for (int64_t c = lane; c < C; c += 32) {
      const float v = ld(xr + c);
      ss += v * v;
    }
    const float rs = rsqrtf(warp_sum(ss) / static_cast<float>(C) + eps);
    if (lane == 0) rstd[r] = rs;
    Y* yr = y + r * C;
    for (int64_t c = lane; c < C; c += 32) st(yr + c, ld(xr + c) * rs * w[c]);  // x again: from L1/L2
  }
}

// Each block takes rows blockIdx.x, blockIdx.x + gridDim.x, ...; its warps split them. The weight's
// gradient: each warp sums dy * xhat per column over its rows into its own row of shared memory
// (a lane owns its columns: no atomics), then the block adds its warps' rows in a fixed order and
// writes the block's row of dw_partial. Same grid, same order: bit-identical runs (exact resume).
template <typename X, typename Y>
__global__ void __launch_bounds__(kWarps * 32) rms_backward_kernel(const Y* __restrict__ dy, const X* __restrict__ x,
                                                                   const float* __restrict__ w,
                                                                   const float* __restrict__ rstd, X* __restrict__ dx,
                                                                   float* __restrict__ dw_partial, int64_t rows,
                                                                   int64_t C) {
  extern __shared__ float dw_shared[];  // [kWarps, C]
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  float* dw_warp = dw_shared + warp * C;
  for (int64_t c = lane; c < C; c += 32) dw_warp[c] = 0.f;
  for (int64_t r = blockIdx.x + static_cast<int64_t>(gridDim.x) * warp; r < rows; r += static_cast<int64_t>(gridDim.x) * kWarps) {
    const X* xr = x + r * C;
    const Y* dyr = dy + r * C;
    const float rs = rstd[r];
    float dot = 0.f;  // sum over the row of g * xhat
    for (int64_t c = lane; c < C; c += 32) dot += ld(dyr + c) * w[c] * ld(xr + c) * rs;
    const float mean = warp_sum(dot) / static_cast<float>(C);
    X* dxr = dx + r * C;
    for (int64_t c = lane; c < C; c += 32) {
      const float xhat = ld(xr + c) * rs, g = ld(dyr + c);
      st(dxr + c, rs * (g * w[c] - xhat * mean));
      dw_warp[c] += g * xhat;
    }
  }
  __syncthreads();
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    float sum = 0.f;
    for (int k = 0; k < kWarps; ++k) sum += dw_shared[k * C + c];
    dw_partial[blockIdx.x * C + c] = sum;
  }
}

template <typename X, typename Y>
cudaError_t forward_t(const void* x, const float* w, void* y, float* rstd, int64_t rows, int64_t C, float eps,
                      cudaStream_t stream) {
  const int64_t blocks = std::min<int64_t>((rows + kWarps - 1) / kWarps, int64_t{1} << 16);
  rms_forward_kernel<X, Y><<<static_cast<unsigned>(blocks), kWarps * 32, 0, stream>>>(
      static_cast<const X*>(x), w, static_cast<Y*>(y), rstd, rows, C, eps);
  return cudaGetLastError();
}

template <typename X, typename Y>
cudaError_t backward_t(const void* dy, const void* x, const float* w, const float* rstd, void* dx, float* dw_partial,
                       int64_t rows, int64_t C, cudaStream_t stream) {
  const int64_t blocks = rms_norm_backward_blocks(rows);
  const size_t shared = static_cast<size_t>(kWarps * C) * sizeof(float);
  if (shared > 48 * 1024) {  // C > 1536: opt in to more shared memory (up to ~227 KB on Hopper)
    const cudaError_t e = cudaFuncSetAttribute(rms_backward_kernel<X, Y>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                               static_cast<int>(shared));
    if (e != cudaSuccess) return e;
  }
  rms_backward_kernel<X, Y><<<static_cast<unsigned>(blocks), kWarps * 32, shared, stream>>>(
      static_cast<const Y*>(dy), static_cast<const X*>(x), w, rstd, static_cast<X*>(dx), dw_partial, rows, C);
  return cudaGetLastError();
}

}  // namespace

int64_t rms_norm_backward_blocks(int64_t rows) { return std::max<int64_t>(1, std::min(rows, kBackwardBlocks)); }

cudaError_t rms_norm_forward(const void* x, DType xd, const float* w, void* y, DType yd, float* rstd, int64_t rows,
                             int64_t C, float eps, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  using bf = __nv_bfloat16;
  if (xd == DType::F32 && yd == DType::F32) return forward_t<float, float>(x, w, y, rstd, rows, C, eps, stream);
  if (xd == DType::F32 && yd == DType::BF16) return forward_t<float, bf>(x, w, y, rstd, rows, C, eps, stream);
  if (xd == DType::BF16 && yd == DType::F32) return forward_t<bf, float>(x, w, y, rstd, rows, C, eps, stream);
  return forward_t<bf, bf>(x, w, y, rstd, rows, C, eps, stream);
}

cudaError_t rms_norm_backward(const void* dy, DType yd, const void* x, DType xd, const float* w, const float* rstd,
                              void* dx, float* dw_partial, int64_t rows, int64_t C, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  using bf = __nv_bfloat16;
  if (xd == DType::F32 && yd == DType::F32) return backward_t<float, float>(dy, x, w, rstd, dx, dw_partial, rows, C, stream);
  if (xd == DType::F32 && yd == DType::BF16) return backward_t<float, bf>(dy, x, w, rstd, dx, dw_partial, rows, C, stream);
  if (xd == DType::BF16 && yd == DType::F32) return backward_t<bf, float>(dy, x, w, rstd, dx, dw_partial, rows, C, stream);
  return backward_t<bf, bf>(dy, x, w, rstd, dx, dw_partial, rows, C, stream);
}

}  // namespace cuda
}  // namespace linearnexus
