// The fused causal depthwise conv1d + SiLU kernels' launchers (implemented in causal_conv.cu). No
// torch types: raw device pointers, sizes and a stream, so the .cu compiles with nvcc alone; the
// torch glue (autograd, checks) is causal_conv_gpu.cpp.
//
// Per batch row b, time t and channel d (K taps, x_j = history[b, d, K - 1 + j] for j < 0, or 0
// without a history):
//   p[b, t, d] = bias[d] + sum_k w[d, k] x[b, t - (K - 1) + k, d]
//   y[b, t, d] = silu(p[b, t, d])
// x and y are fp32 or bf16 (one dtype); w, bias, the sums and the weight gradients are fp32.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace linearnexus {
namespace mamba {
namespace cuda {

// The widest conv the kernels take (Mamba uses 4).
constexpr int64_t kMaxConvTaps = 8;

struct ConvArgs {
  int64_t B = 0, T = 0, D = 0, K = 0;
  bool bf16 = false;
  const void* x = nullptr;  // [B, T, D]: element (b, t, d) at x[(b * T + t) * x_row + d]
  int64_t x_row = 0;
  const float* w = nullptr;        // [D, K]
  const float* bias = nullptr;     // [D] or null
  const float* history = nullptr;  // [B, D, K - 1] fp32, or null (zeros before t = 0)
};

// y [B, T, D] contiguous, x's dtype.
cudaError_t conv_silu_forward(const ConvArgs& a, void* y, cudaStream_t stream);

// Time tiles of the backward: dw and dbias come back as one partial sum per (batch row, tile).
int64_t conv_backward_tiles(int64_t T);

// dy [B, T, D] contiguous (x's dtype) -> dx [B, T, D] with rows dx_row apart (x's dtype; D for a
// contiguous one, 2 D for the first half of the block's [B, T, 2 D] in-projection gradient),
// dw [B * tiles, D, K] and dbias [B * tiles, D] partial sums (dbias may be null). The history gets no
// gradient (it is a cache, never trained through).
cudaError_t conv_silu_backward(const ConvArgs& a, const void* dy, void* dx, int64_t dx_row, float* dw, float* dbias,
                               cudaStream_t stream);

}  // namespace cuda
}  // namespace mamba
}  // namespace linearnexus
