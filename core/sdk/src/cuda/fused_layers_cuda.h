// The CUDA paths of shared layers (layers.h): RMSNorm (rms_norm.cu) and the residual add before it
// (residual_rms_norm.cu), attention's qkv split with
// rotary embeddings (rope.cu) and SwiGLU's gate (swiglu.cu), each an autograd node around its
// forward and backward kernels.
// Core-internal; built only with CUDA. layers.cpp calls them where fused_applies() says so.
#pragma once

#include <ATen/ATen.h>

#include <vector>

namespace linearnexus {
namespace cuda {

// The kernels take fp32 / bf16 tensors on a CUDA device; false everywhere when the environment
// has LINEARNEXUS_UNFUSED=1 (the plain ops then: for comparisons and for ruling a kernel out).
bool fused_applies(const at::Tensor& x);

// x [..., C] (fp32 or bf16), w [C] fp32 -> [..., C] in out_dtype (fp32 or bf16).
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& w, double eps, at::ScalarType out_dtype);

// A block's residual add and the norm after it in one kernel each way (residual_rms_norm.cu):
// x [..., C] (the residual stream), y [..., C] of x's dtype or narrower (fp32 / bf16), w [C] fp32
// -> {h = x + y in x's dtype, rms_norm(h) in out_dtype}.
std::vector<at::Tensor> residual_rms_norm(const at::Tensor& x, const at::Tensor& y, const at::Tensor& w, double eps,
                                          at::ScalarType out_dtype);

// a + b for the residual stream a [..., C] and a block's output b of the same shape, b in a's dtype
// or narrower (residual_add.cu, its gradients as autograd's add gives them); a + b as the op where
// the shapes or dtypes differ otherwise.
at::Tensor residual_add(const at::Tensor& a, const at::Tensor& b);

// {x, rms_norm(x)} for a pre-norm whose input flows on in the residual stream: x itself (as a view
// whose gradient goes through the norm's node), and the norm in out_dtype; backward adds the
// stream's gradient of x into the norm's in one kernel (residual_rms_norm.cu).
std::vector<at::Tensor> rms_norm_residual(const at::Tensor& x, const at::Tensor& w, double eps,
                                          at::ScalarType out_dtype);

// qkv [B, T, (H + 2 Hkv) D] -> {q [B, H, T, D], k [B, Hkv, T, D], v [B, Hkv, T, D]}, each the
// transposed view of a contiguous [B, T, heads, D], with RoPE on q and k at positions [B or 1, T]
// when `rope`.
std::vector<at::Tensor> qkv_rope(const at::Tensor& qkv, const at::Tensor& positions, int64_t H, int64_t Hkv, int64_t D,
                                 bool rope, double base);

// silu(gate) * up for gate, up [..., hidden] of one dtype (fp32 or bf16).
at::Tensor swiglu(const at::Tensor& gate, const at::Tensor& up);

}  // namespace cuda
}  // namespace linearnexus
