// The mamba block's scan on CUDA, gate included: the torch side (checks, dtypes, autograd) of the
// kernels in selective_scan.cu. The block uses it for `scan: auto` on a CUDA device.
#pragma once

#include <ATen/ATen.h>

namespace linearnexus {
namespace mamba {

// Whether this build has the CUDA kernels and they take this tensor (on CUDA) and d_state.
bool cuda_scan_applies(const at::Tensor& u, int64_t d_state);

struct GatedScanResult {
  at::Tensor out, state;
};

// Shapes: u, dt, z [B, T, D]; dt_bias, Dskip [D]; A [D, N] (negative); Bm, Cm [B, T, N]; s0 [B, D, N]
// or undefined (a zero state). Computes, with delta = softplus(dt + dt_bias) (dt itself when
// `softplus` is false and dt_bias undefined),
//   s_t = exp(delta_t A) s_{t-1} + delta_t B_t u_t,   out_t = (C_t s_t + Dskip u_t) * silu(z_t)
// -> out [B, T, D] in u's dtype (fp32 or bf16; dt, z, Bm, Cm are cast to it) and the state after
// the last token [B, D, N] (fp32). Differentiable in every tensor input; the states, the sums and
// the gradients of the fp32 parameters are fp32.
GatedScanResult scan_gated_cuda(const at::Tensor& u, const at::Tensor& dt, const at::Tensor& dt_bias, bool softplus,
                                const at::Tensor& A, const at::Tensor& Bm, const at::Tensor& Cm,
                                const at::Tensor& Dskip, const at::Tensor& z, const at::Tensor& s0);

// The block's whole inner part on CUDA as one autograd node, for training (mamba_inner_gpu.cpp):
//   (xi, z) = xz;  u = silu(causal_conv(xi) + conv_bias);  dbc = u x_w^T;
//   dt = dbc[.., :R] dt_w^T;  out = scan_gated(u, dt, dt_bias (softplus), A, dbc[.., R:R+N],
//   dbc[.., R+N:], Dskip, z) from a zero state
// xz [B, T, 2 D] contiguous, fp32 or bf16 (the matmuls and out in its dtype); conv_w [D, K],
// conv_b [D] or undefined, x_w [R + 2 N, D], dt_w [D, R], dt_bias [D], A [D, N], Dskip [D] (fp32)
// -> out [B, T, D]. Backward keeps only xz, dbc and the scan's chunk states: u and dt are computed
// again. mamba_inner_applies says whether it takes them (CUDA, K <= the conv kernel's limit).
bool mamba_inner_applies(const at::Tensor& xz, int64_t d_state, int64_t d_conv);
at::Tensor mamba_inner_cuda(const at::Tensor& xz, const at::Tensor& conv_w, const at::Tensor& conv_b,
                            const at::Tensor& x_w, const at::Tensor& dt_w, const at::Tensor& dt_bias,
                            const at::Tensor& A, const at::Tensor& Dskip);

// One decoded token of the block's causal depthwise conv + silu on CUDA (conv_step.cu): x [B, 1, D]
// (fp32 or bf16, rows may be strided), state [B, D, K - 1] in x's dtype and contiguous, updated in
// place to the last K - 1 inputs; weight [D, K], bias [D] or undefined (fp32) -> u [B, 1, D]
// contiguous in x's dtype. Inference only (no autograd). conv_step_applies says whether it takes them.
bool conv_step_applies(const at::Tensor& x, const at::Tensor& state);
at::Tensor conv_step_cuda(const at::Tensor& x, const at::Tensor& state, const at::Tensor& weight,
                          const at::Tensor& bias);

}  // namespace mamba
}  // namespace linearnexus
