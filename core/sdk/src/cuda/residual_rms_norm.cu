// The residual add fused into the RMSNorm after it (launchers and contract in kernels.h).
//
// Why: a pre-norm block's tail is h = x + y; n = rms_norm(h) (then out = h + mlp(n)). Apart, the
// add reads x (fp32) and y (bf16) and writes h, the norm reads h again and writes n; backward, the
// norm writes its dh, autograd adds the gradient of the residual stream to it in another fp32 pass
// (add<float>) and casts the sum to bf16 for y in a third. Here forward reads x and y once and writes
// h and n; backward reads dh (the residual stream's gradient), dn and h once and writes dx and dy,
// the sum included: ~9 ms of add<float> passes in a gpt-small step were half of these.
// The backward also serves a block's first norm (RMSNorm::forward_residual, no add before it): there
// dh is the gradient of the block's input along the residual stream, and the sum with the norm's
// gradient (the other add<float> per block) is done here as well, and with dh = dy = null it is a
// plain RMSNorm's backward (rms_norm.cu's rms_norm_backward calls it so). The forward's math is
// rms_norm.cu's (same order of operations); one warp per row.
#include <cuda_bf16.h>

#include <algorithm>
#include <type_traits>

#include "device_io.cuh"
#include "kernels.h"

namespace linearnexus {
namespace cuda {
namespace {

constexpr int kWarps = 8;  // rows in flight per block (one warp each)

// x, h: [rows, C] (X); y: [rows, C] (Y); n: [rows, C] (N); w: [C]; rstd: [rows]
template <typename X, typename Y, typename N>
__global__ void __launch_bounds__(kWarps * 32)
    residual_rms_forward_kernel(const X* __restrict__ x, const Y* __restrict__ y, const float* __restrict__ w,
                                X* __restrict__ h, N* __restrict__ n, float* __restrict__ rstd, int64_t rows, int64_t C,
                                float eps) {
  const int lane = threadIdx.x % 32;
  for (int64_t r = blockIdx.x * static_cast<int64_t>(kWarps) + threadIdx.x / 32; r < rows;
       r += static_cast<int64_t>(gridDim.x) * kWarps) {
    const X* xr = x + r * C;
    const Y* yr = y + r * C;
    X* hr = h + r * C;
    float ss = 0.f;
    for (int64_t c = lane; c < C; c += 32) {
      const float v = rounded(ld(xr + c) + ld(yr + c), hr);  // h as stored: the norm sees what autograd saves
      st(hr + c, v);
      ss += v * v;
    }
    const float rs = rsqrtf(warp_sum(ss) / static_cast<float>(C) + eps);
    if (lane == 0) rstd[r] = rs;
    N* nr = n + r * C;
    // x and y again (read-only, from L1/L2) rather than h just written.
    for (int64_t c = lane; c < C; c += 32) st(nr + c, rounded(ld(xr + c) + ld(yr + c), hr) * rs * w[c]);
  }
}

// dh: [rows, C] (X) or null (zero); dn: [rows, C] (N); h, dx: [rows, C] (X); dy: [rows, C] (Y) or null;
// dw_partial: [gridDim.x, C]. Each block takes rows blockIdx.x, blockIdx.x + gridDim.x, ...; its warps
// split them. The weight's gradient: each warp sums dn * hhat per column over its rows into its own
// row of shared memory (a lane owns its columns: no atomics), then the block adds its warps' rows in
// a fixed order and writes the block's row of dw_partial. Same grid, same order: bit-identical runs.
template <typename X, typename Y, typename N>
__global__ void __launch_bounds__(kWarps * 32)
    residual_rms_backward_kernel(const X* __restrict__ dh, const N* __restrict__ dn, const X* __restrict__ h,
                                 const float* __restrict__ w, const float* __restrict__ rstd, X* __restrict__ dx,
                                 Y* __restrict__ dy, float* __restrict__ dw_partial, int64_t rows, int64_t C) {
  extern __shared__ float dw_shared[];  // [kWarps, C]
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  float* dw_warp = dw_shared + warp * C;
  for (int64_t c = lane; c < C; c += 32) dw_warp[c] = 0.f;
  for (int64_t r = blockIdx.x + static_cast<int64_t>(gridDim.x) * warp; r < rows;
       r += static_cast<int64_t>(gridDim.x) * kWarps) {
    const X* hr = h + r * C;
    const N* dnr = dn + r * C;
    const float rs = rstd[r];
    float dot = 0.f;  // sum over the row of g * hhat
    for (int64_t c = lane; c < C; c += 32) dot += ld(dnr + c) * w[c] * ld(hr + c) * rs;
    const float mean = warp_sum(dot) / static_cast<float>(C);
    X* dxr = dx + r * C;
    Y* dyr = dy ? dy + r * C : nullptr;
    for (int64_t c = lane; c < C; c += 32) {
      const float hhat = ld(hr + c) * rs, g = ld(dnr + c);
      // The norm's gradient rounded to h's dtype, as autograd would hold it, then the sum with the
      // residual stream's, rounded again: the value autograd's add gives x and casts for y.
      float d = rounded(rs * (g * w[c] - hhat * mean), hr);
      if (dh) d = rounded(d + ld(dh + r * C + c), hr);
      st(dxr + c, d);
      if (dy) st(dyr + c, d);
      dw_warp[c] += g * hhat;
    }
  }
  __syncthreads();
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    float sum = 0.f;
    for (int k = 0; k < kWarps; ++k) sum += dw_shared[k * C + c];
    dw_partial[blockIdx.x * C + c] = sum;
  }
}

// At most 6 chunks of 128 columns (C <= 768, gpt-small's): beyond, ptxas spills at 2 blocks of 256
// threads per SM (128 registers a thread), and the kernel above is used.
constexpr int kMaxChunks = 6;

// The same backward with the row in registers, for C = 128 K (K <= kMaxChunks). Lane l holds columns (k * 32 + l) * 4 .. + 3, k < K, of every row it takes, so: one read of
// h and dn per row (the kernel above reads them twice, the second time from L2 once its shared memory
// has squeezed L1: ~2.2 TB/s at gpt-small), 4-value vector accesses, and the weight's gradient summed
// in registers (shared memory only for the block's final sum). Same rows per block, same results up
// to the order of the row's dot product.
template <typename X, typename Y, typename N, int K>
__global__ void __launch_bounds__(kWarps * 32, 2)
    residual_rms_backward_regs_kernel(const X* __restrict__ dh, const N* __restrict__ dn, const X* __restrict__ h,
                                      const float* __restrict__ w, const float* __restrict__ rstd, X* __restrict__ dx,
                                      Y* __restrict__ dy, float* __restrict__ dw_partial, int64_t rows, int64_t C) {
  extern __shared__ float dw_shared[];  // [kWarps, C]
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  float dw[K][4];
#pragma unroll
  for (int k = 0; k < K; ++k)
#pragma unroll
    for (int e = 0; e < 4; ++e) dw[k][e] = 0.f;
  for (int64_t r = blockIdx.x + static_cast<int64_t>(gridDim.x) * warp; r < rows;
       r += static_cast<int64_t>(gridDim.x) * kWarps) {
    const float rs = rstd[r];
    float hv[K][4], gv[K][4];  // h and dn of this lane's columns (dh is read where it is added: registers)
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int64_t at = r * C + (k * 32 + lane) * 4;
      Pack4<X>::load(h + at, hv[k]);
      Pack4<N>::load(dn + at, gv[k]);
    }
    float dot = 0.f;  // sum over the row of g * hhat
#pragma unroll
    for (int k = 0; k < K; ++k) {
      float wk[4];
      Pack4<float>::load(w + (k * 32 + lane) * 4, wk);
#pragma unroll
      for (int e = 0; e < 4; ++e) dot += gv[k][e] * wk[e] * hv[k][e] * rs;
    }
    const float mean = warp_sum(dot) / static_cast<float>(C);
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int64_t at = r * C + (k * 32 + lane) * 4;
      float wk[4], d[4], dhv[4] = {0.f, 0.f, 0.f, 0.f};
      Pack4<float>::load(w + (k * 32 + lane) * 4, wk);
      if (dh) Pack4<X>::load(dh + at, dhv);
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float hhat = hv[k][e] * rs, g = gv[k][e];
        d[e] = rounded(rs * (g * wk[e] - hhat * mean), h);  // as in the kernel above
        if (dh) d[e] = rounded(d[e] + dhv[e], h);
        dw[k][e] += g * hhat;
      }
      Pack4<X>::store(dx + at, d);
      if (dy) Pack4<Y>::store(dy + at, d);
    }
  }
#pragma unroll
  for (int k = 0; k < K; ++k)
#pragma unroll
    for (int e = 0; e < 4; ++e) dw_shared[warp * C + (k * 32 + lane) * 4 + e] = dw[k][e];
  __syncthreads();
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    float sum = 0.f;
    for (int k = 0; k < kWarps; ++k) sum += dw_shared[k * C + c];
    dw_partial[blockIdx.x * C + c] = sum;
  }
}

// The register kernel for C = 128 K, K <= kMaxChunks, where every pointer is 16-byte aligned, and only for
// the dtype combinations the layers use (fp32 stream with a bf16 or fp32 norm output, or one dtype
// throughout: fewer instantiations); false where it does not apply (the caller takes the kernel above).
template <typename X, typename Y, typename N>
bool launch_backward_regs(const void* dh, const void* dn, const void* h, const float* w, const float* rstd, void* dx,
                          void* dy, float* dw_partial, int64_t rows, int64_t C, int64_t blocks, size_t shared,
                          cudaStream_t stream, cudaError_t* err) {
  constexpr bool kFp32Stream = std::is_same<X, float>::value && std::is_same<N, __nv_bfloat16>::value;
  constexpr bool kOneType = std::is_same<X, Y>::value && std::is_same<X, N>::value;
  if constexpr (!kFp32Stream && !kOneType) {
    return false;
  } else {
    if (C % 128 != 0 || C / 128 > kMaxChunks || !aligned16(dn) || !aligned16(h) || !aligned16(w) || !aligned16(dx) ||
        (dh && !aligned16(dh)) || (dy && !aligned16(dy)))
      return false;
    auto go = [&](auto kernel) {
      *err = cudaSuccess;
      if (shared > 48 * 1024)
        *err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(shared));
      if (*err != cudaSuccess) return true;
      kernel<<<static_cast<unsigned>(blocks), kWarps * 32, shared, stream>>>(
          static_cast<const X*>(dh), static_cast<const N*>(dn), static_cast<const X*>(h), w, rstd, static_cast<X*>(dx),
          static_cast<Y*>(dy), dw_partial, rows, C);
      *err = cudaGetLastError();
      return true;
    };
    switch (C / 128) {
      case 1:
        return go(residual_rms_backward_regs_kernel<X, Y, N, 1>);
      case 2:
        return go(residual_rms_backward_regs_kernel<X, Y, N, 2>);
      case 3:
        return go(residual_rms_backward_regs_kernel<X, Y, N, 3>);
      case 4:
        return go(residual_rms_backward_regs_kernel<X, Y, N, 4>);
      case 5:
        return go(residual_rms_backward_regs_kernel<X, Y, N, 5>);
      default:
        return go(residual_rms_backward_regs_kernel<X, Y, N, 6>);
    }
  }
}

// Calls f with a value of the C++ type of d (the dtype dispatch of the launchers below).
template <typename F>
cudaError_t with_type(DType d, F f) {
  return d == DType::BF16 ? f(__nv_bfloat16{}) : f(float{});
}

// Calls f<X, Y, N> (as f(X{}, Y{}, N{})) for the C++ types of the three dtypes.
template <typename F>
cudaError_t with_types(DType xd, DType yd, DType nd, F f) {
  return with_type(xd, [&](auto xt) {
    return with_type(yd, [&](auto yt) { return with_type(nd, [&](auto nt) { return f(xt, yt, nt); }); });
  });
}

}  // namespace

cudaError_t residual_rms_norm_forward(const void* x, DType xd, const void* y, DType yd, const float* w, void* h,
                                      void* n, DType nd, float* rstd, int64_t rows, int64_t C, float eps,
                                      cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  const int64_t blocks = std::min<int64_t>((rows + kWarps - 1) / kWarps, int64_t{1} << 16);
  return with_types(xd, yd, nd, [&](auto xt, auto yt, auto nt) {
    using X = decltype(xt);
    using Y = decltype(yt);
    using N = decltype(nt);
    residual_rms_forward_kernel<X, Y, N><<<static_cast<unsigned>(blocks), kWarps * 32, 0, stream>>>(
        static_cast<const X*>(x), static_cast<const Y*>(y), w, static_cast<X*>(h), static_cast<N*>(n), rstd, rows, C,
        eps);
    return cudaGetLastError();
  });
}

cudaError_t residual_rms_norm_backward(const void* dh, const void* dn, DType nd, const void* h, DType xd,
                                       const float* w, const float* rstd, void* dx, void* dy, DType yd,
                                       float* dw_partial, int64_t rows, int64_t C, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  const int64_t blocks = rms_norm_backward_blocks(rows);
  const size_t shared = static_cast<size_t>(kWarps * C) * sizeof(float);
  return with_types(xd, yd, nd, [&](auto xt, auto yt, auto nt) {
    using X = decltype(xt);
    using Y = decltype(yt);
    using N = decltype(nt);
    cudaError_t err = cudaSuccess;
    if (launch_backward_regs<X, Y, N>(dh, dn, h, w, rstd, dx, dy, dw_partial, rows, C, blocks, shared, stream, &err))
      return err;
    auto kernel = residual_rms_backward_kernel<X, Y, N>;
    if (shared > 48 * 1024) {  // C > 1536: opt in to more shared memory (up to ~227 KB on Hopper)
      const cudaError_t e =
          cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(shared));
      if (e != cudaSuccess) return e;
    }
    kernel<<<static_cast<unsigned>(blocks), kWarps * 32, shared, stream>>>(
        static_cast<const X*>(dh), static_cast<const N*>(dn), static_cast<const X*>(h), w, rstd, static_cast<X*>(dx),
        static_cast<Y*>(dy), dw_partial, rows, C);
    return cudaGetLastError();
  });
}

}  // namespace cuda
}  // namespace linearnexus
