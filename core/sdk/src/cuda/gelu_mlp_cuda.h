// GPT-2's MLP, down(gelu_tanh(up(x))), on CUDA with the GELU inside cuBLASLt's matmul epilogues.
// Core-internal; built only with CUDA. MLP::forward (layers.cpp) calls it while training.
#pragma once

#include <ATen/ATen.h>

namespace linearnexus {
namespace cuda {

// x [..., C], w_up [H, C], w_down [C, H], all of one dtype (bf16 or fp32; the caller casts the fp32
// weights as autocast would) -> [..., C]. Differentiable in all three.
at::Tensor gelu_mlp(const at::Tensor& x, const at::Tensor& w_up, const at::Tensor& w_down);

}  // namespace cuda
}  // namespace linearnexus
