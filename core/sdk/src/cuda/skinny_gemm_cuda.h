// The ATen side of skinny_gemm.cu (kernels.h): the Linear of a decoding step as one kernel.
// Core-internal; built only with CUDA. layers.cpp's linear_forward and MLP call it where
// skinny_linear_applies() says so; the GPU test and bench_skinny_gemm call it directly.
#pragma once

#include <ATen/ATen.h>

#include <utility>

#include "kernels.h"

namespace linearnexus {
namespace cuda {

// Whether skinny_linear can compute this Linear: fused_applies(x) (CUDA, LINEARNEXUS_UNFUSED unset),
// LINEARNEXUS_SKINNY_GEMM not 0,
// no gradient wanted, w [N, K] bf16 contiguous and 16-byte aligned with K % 8 == 0, x [..., K] of 1..16
// rows on w's device in bf16 (or fp32 under bf16 autocast, cast as autocast would), bias [N] and
// residual [..., N] (x's leading shape) fp32 or bf16 when defined. Else the caller runs the ops.
bool skinny_linear_applies(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias,
                           const at::Tensor& residual);

// act(x W^T + bias) + residual, x [..., K] -> [..., N] in residual's dtype, else bf16; bias and
// residual undefined: none; act gelu_tanh when `gelu`. config: an explicit launch configuration
// (benchmarks; null: the launcher's); pdl: programmatic dependent launch. Checks what
// skinny_linear_applies does except the gradient and autocast rules (throws Error otherwise).
at::Tensor skinny_linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias, const at::Tensor& residual,
                         bool gelu = false, const SkinnyGemmConfig* config = nullptr, bool pdl = false);

// Whether skinny_norm_linear can compute linear(norm(x)) as one kernel: skinny_linear_applies for
// (x, w, bias, residual), with x the rows before the norm (fp32 under bf16 autocast, or bf16), the
// norm's weight [K] (and LayerNorm's bias [K] when defined) fp32 or bf16 on w's device wanting no
// gradient, and the prologue's shared memory within the launcher's (skinny_norm_gemm_supported).
bool skinny_norm_linear_applies(const at::Tensor& x, const at::Tensor& norm_w, const at::Tensor& norm_b,
                                const at::Tensor& w, const at::Tensor& bias, const at::Tensor& residual);

// act(norm(x) W^T + bias) + residual (skinny_linear's contract) with norm(x) computed inside the
// kernel and rounded to bf16: RMSNorm x rstd norm_w (rms_norm.cu's arithmetic), or with layer_norm
// (x - mean) rstd norm_w + norm_b (undefined: none), over x's last dim in fp32. Checks what
// skinny_norm_linear_applies does except the gradient and autocast rules (throws Error otherwise).
at::Tensor skinny_norm_linear(const at::Tensor& x, const at::Tensor& norm_w, const at::Tensor& norm_b, double eps,
                              bool layer_norm, const at::Tensor& w, const at::Tensor& bias, const at::Tensor& residual,
                              bool gelu = false, const SkinnyGemmConfig* config = nullptr);

// The greedy head without the logits: for x [M, K] (1..16 rows before the final norm) the token
// argmax_n y[m, n] (the first on ties) and its log-softmax, y = bf16(norm(x) W[:V]^T) (W [>= V, K]:
// rows past V, the padding, are not read), as {token [M] int64, logp [M] fp32}: one kernel, the norm
// in its prologue and per-CTA (max, argmax, sum exp) partials that its last CTA reduces. workspace:
// bytes on x's device, at least greedy_workspace_bytes(V), zero before its first use (each call
// leaves it so). Checks what skinny_norm_linear does (throws Error otherwise).
int64_t greedy_workspace_bytes(int64_t V);
std::pair<at::Tensor, at::Tensor> skinny_norm_greedy_head(const at::Tensor& x, const at::Tensor& norm_w,
                                                          const at::Tensor& norm_b, double eps, bool layer_norm,
                                                          const at::Tensor& w, int64_t V, const at::Tensor& workspace);

}  // namespace cuda
}  // namespace linearnexus
