// The mamba block's causal depthwise conv1d + SiLU on CUDA: the torch side (checks, dtypes,
// autograd) of the kernels in causal_conv.cu. The block uses it for `scan: auto` on a CUDA device,
// with the CUDA selective scan.
#pragma once

#include <ATen/ATen.h>

namespace linearnexus {
namespace mamba {

// Whether this build has the CUDA kernels and they take x (on CUDA, fp32 or bf16) and K taps.
bool cuda_conv_applies(const at::Tensor& x, int64_t taps);

// silu(causal_depthwise_conv1d(x, weight, bias, history)) as layers.h defines the conv:
// x [B, T, D] (rows may be strided, as a narrow of a wider tensor), weight [D, K], bias [D] or
// undefined, history [B, D, K-1] (the inputs before x) or undefined (zeros).
// -> u [B, T, D] contiguous in x's dtype; through new_history (when not null) the last K-1 inputs
// [B, D, K-1]. Differentiable in x, weight and bias (never in the history: a cache).
at::Tensor conv_silu_cuda(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                          const at::Tensor& history, at::Tensor* new_history);

}  // namespace mamba
}  // namespace linearnexus
