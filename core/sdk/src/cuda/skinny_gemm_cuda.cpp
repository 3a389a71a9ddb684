// ATen glue of skinny_gemm.cu (skinny_gemm_cuda.h): the skinny Linear, and with its norm prologue.
#include "skinny_gemm_cuda.h"

#include <ATen/core/grad_mode.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <cstdint>
#include <cstdlib>
#include <string>

#include "fused_layers_cuda.h"
#include "linearnexus/compat.h"
#include "linearnexus/cuda_glue.h"
#include "linearnexus/error.h"

namespace linearnexus {
namespace cuda {
namespace {

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

bool fp32_or_bf16(const at::Tensor& t) { return t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16; }

DType dtype_of(const at::Tensor& t) { return t.scalar_type() == at::kBFloat16 ? DType::BF16 : DType::F32; }

// The output's shape: x's leading dims, then N.
std::vector<int64_t> out_shape(const at::Tensor& x, int64_t N) {
  std::vector<int64_t> s(x.sizes().begin(), x.sizes().end());
  s.back() = N;
  return s;
}

bool operands_fit(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias, const at::Tensor& residual) {
  if (w.dim() != 2 || x.dim() < 1 || w.scalar_type() != at::kBFloat16 || !w.is_contiguous() || !aligned16(w.data_ptr()))
    return false;
  const int64_t N = w.size(0), K = w.size(1);
  if (x.size(-1) != K || K % 8 != 0 || x.device() != w.device() || !fp32_or_bf16(x)) return false;
  const int64_t M = K > 0 ? x.numel() / K : 0;
  if (M < 1 || M > 16) return false;
  if (bias.defined() && (bias.dim() != 1 || bias.size(0) != N || !fp32_or_bf16(bias) || bias.device() != w.device()))
    return false;
  if (residual.defined() && (residual.sizes() != at::IntArrayRef(out_shape(x, N)) || !fp32_or_bf16(residual) ||
                             residual.device() != w.device()))
    return false;
  return true;
}

bool wants_grad(const at::Tensor& t) { return t.defined() && t.requires_grad(); }

// The norm's weight (and bias) [K], fp32 or bf16, on w's device.
bool norm_fits(const at::Tensor& norm_w, const at::Tensor& norm_b, const at::Tensor& w) {
  auto fits = [&](const at::Tensor& t) {
    return t.dim() == 1 && t.size(0) == w.size(1) && fp32_or_bf16(t) && t.device() == w.device();
  };
  return norm_w.defined() && fits(norm_w) && (!norm_b.defined() || fits(norm_b));
}

bool pdl_from_env() {
  // LINEARNEXUS_SKINNY_PDL=1: programmatic dependent launch in the model too (an experiment: the
  // weights' loads then overlap the previous kernel's tail; off by default until measured in a step).
  const char* pdl_env = std::getenv("LINEARNEXUS_SKINNY_PDL");
  return pdl_env && std::string(pdl_env) == "1";
}

}  // namespace

bool skinny_linear_applies(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias,
                           const at::Tensor& residual) {
  if (!fused_applies(x) || !operands_fit(x, w, bias, residual)) return false;
  // LINEARNEXUS_SKINNY_GEMM=0 rules this kernel alone out (A/B runs of decoding against cuBLAS).
  const char* off = std::getenv("LINEARNEXUS_SKINNY_GEMM");
  if (off && std::string(off) == "0") return false;
  if (at::GradMode::is_enabled() && (wants_grad(x) || wants_grad(w) || wants_grad(bias) || wants_grad(residual)))
    return false;
  // bf16 math is what the Linear does: x bf16, or fp32 that bf16 autocast would cast.
  return x.scalar_type() == at::kBFloat16 || compat::cuda_autocast_dtype() == at::kBFloat16;
}

at::Tensor skinny_linear(const at::Tensor& x_in, const at::Tensor& w, const at::Tensor& bias_in,
                         const at::Tensor& residual_in, bool gelu, const SkinnyGemmConfig* config, bool pdl) {
  if (!x_in.is_cuda() || !operands_fit(x_in, w, bias_in, residual_in))
    throw Error(
        "skinny_linear: needs CUDA tensors, w [N, K] bf16 contiguous with K % 8 == 0, x [..., K] of 1..16 rows");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const int64_t N = w.size(0), K = w.size(1), M = x_in.numel() / K;
  // x [M, K] bf16 with 16-byte aligned rows (a fresh copy where a view is not).
  at::Tensor x = x_in.to(at::kBFloat16).reshape({M, K});
  if (!x.is_contiguous() || !aligned16(x.data_ptr())) x = x.clone(at::MemoryFormat::Contiguous);
  const at::Tensor bias = bias_in.defined() ? bias_in.contiguous() : bias_in;
  const at::Tensor residual = residual_in.defined() ? residual_in.contiguous() : residual_in;
  at::Tensor y =
      at::empty(out_shape(x_in, N), w.options().dtype(residual.defined() ? residual.scalar_type() : at::kBFloat16));
  SkinnyGemmArgs a;
  a.x = x.data_ptr(), a.w = w.data_ptr(), a.y = y.data_ptr();
  a.bias = bias.defined() ? bias.data_ptr() : nullptr;
  a.residual = residual.defined() ? residual.data_ptr() : nullptr;
  a.bias_dtype = bias.defined() ? dtype_of(bias) : DType::F32;
  a.residual_dtype = residual.defined() ? dtype_of(residual) : DType::F32;
  a.y_dtype = dtype_of(y);
  a.M = M, a.N = N, a.K = K, a.ldx = K;
  if (config) a.config = *config;
  a.gelu = gelu;
  a.pdl = pdl || pdl_from_env();
  check_cuda(skinny_gemm(a, at::cuda::getCurrentCUDAStream()), "skinny_linear");
  return y;
}

bool skinny_norm_linear_applies(const at::Tensor& x, const at::Tensor& norm_w, const at::Tensor& norm_b,
                                const at::Tensor& w, const at::Tensor& bias, const at::Tensor& residual) {
  if (!skinny_linear_applies(x, w, bias, residual) || !norm_fits(norm_w, norm_b, w)) return false;
  if (at::GradMode::is_enabled() && (wants_grad(norm_w) || wants_grad(norm_b))) return false;
  const c10::cuda::CUDAGuard guard(w.device());
  return skinny_norm_gemm_supported(x.numel() / w.size(1), w.size(0), w.size(1), w.size(1), w.data_ptr());
}

at::Tensor skinny_norm_linear(const at::Tensor& x_in, const at::Tensor& norm_w_in, const at::Tensor& norm_b_in,
                              double eps, bool layer_norm, const at::Tensor& w, const at::Tensor& bias_in,
                              const at::Tensor& residual_in, bool gelu, const SkinnyGemmConfig* config) {
  if (!x_in.is_cuda() || !operands_fit(x_in, w, bias_in, residual_in) || !norm_fits(norm_w_in, norm_b_in, w))
    throw Error(
        "skinny_norm_linear: needs CUDA tensors, w [N, K] bf16 contiguous with K % 8 == 0, x [..., K] of 1..16 "
        "rows, the norm's weight (and bias) [K] fp32 or bf16");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const int64_t N = w.size(0), K = w.size(1), M = x_in.numel() / K;
  const at::Tensor x = x_in.reshape({M, K}).contiguous();  // fp32 or bf16 as it is: the prologue reads either
  const at::Tensor norm_w = norm_w_in.contiguous();
  const at::Tensor norm_b = norm_b_in.defined() ? norm_b_in.to(norm_w.scalar_type()).contiguous() : norm_b_in;
  const at::Tensor bias = bias_in.defined() ? bias_in.contiguous() : bias_in;
  const at::Tensor residual = residual_in.defined() ? residual_in.contiguous() : residual_in;
  at::Tensor y =
      at::empty(out_shape(x_in, N), w.options().dtype(residual.defined() ? residual.scalar_type() : at::kBFloat16));
  SkinnyGemmArgs a;
  a.x = x.data_ptr(), a.w = w.data_ptr(), a.y = y.data_ptr();
  a.bias = bias.defined() ? bias.data_ptr() : nullptr;
  a.residual = residual.defined() ? residual.data_ptr() : nullptr;
  a.bias_dtype = bias.defined() ? dtype_of(bias) : DType::F32;
  a.residual_dtype = residual.defined() ? dtype_of(residual) : DType::F32;
  a.y_dtype = dtype_of(y);
  a.M = M, a.N = N, a.K = K, a.ldx = K;
  if (config) a.config = *config;
  a.gelu = gelu;
  a.pdl = pdl_from_env();
  a.norm_w = norm_w.data_ptr();
  a.norm_b = norm_b.defined() ? norm_b.data_ptr() : nullptr;
  a.x_dtype = dtype_of(x);
  a.norm_dtype = dtype_of(norm_w);
  a.layer_norm = layer_norm;
  a.norm_eps = static_cast<float>(eps);
  check_cuda(skinny_gemm(a, at::cuda::getCurrentCUDAStream()), "skinny_norm_linear");
  return y;
}

int64_t greedy_workspace_bytes(int64_t V) { return static_cast<int64_t>(skinny_greedy_workspace_bytes(V)); }

std::pair<at::Tensor, at::Tensor> skinny_norm_greedy_head(const at::Tensor& x_in, const at::Tensor& norm_w_in,
                                                          const at::Tensor& norm_b_in, double eps, bool layer_norm,
                                                          const at::Tensor& w, int64_t V, const at::Tensor& workspace) {
  if (!x_in.is_cuda() || !operands_fit(x_in, w, at::Tensor(), at::Tensor()) || !norm_fits(norm_w_in, norm_b_in, w) ||
      V < 1 || V > w.size(0) || !workspace.defined() || workspace.device() != w.device() ||
      workspace.nbytes() < static_cast<size_t>(greedy_workspace_bytes(V)) || !aligned16(workspace.data_ptr()))
    throw Error(
        "skinny_norm_greedy_head: needs CUDA tensors, w [>= V, K] bf16 contiguous with K % 8 == 0, x [..., K] of "
        "1..16 rows, the norm's weight (and bias) [K], a workspace of greedy_workspace_bytes(V)");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const int64_t K = w.size(1), M = x_in.numel() / K;
  const at::Tensor x = x_in.reshape({M, K}).contiguous();
  const at::Tensor norm_w = norm_w_in.contiguous();
  const at::Tensor norm_b = norm_b_in.defined() ? norm_b_in.to(norm_w.scalar_type()).contiguous() : norm_b_in;
  at::Tensor token = at::empty({M}, w.options().dtype(at::kLong)), logp = at::empty({M}, w.options().dtype(at::kFloat));
  SkinnyGemmArgs a;
  a.x = x.data_ptr(), a.w = w.data_ptr();
  a.M = M, a.N = V, a.K = K, a.ldx = K;
  a.pdl = pdl_from_env();
  a.norm_w = norm_w.data_ptr();
  a.norm_b = norm_b.defined() ? norm_b.data_ptr() : nullptr;
  a.x_dtype = dtype_of(x);
  a.norm_dtype = dtype_of(norm_w);
  a.layer_norm = layer_norm;
  a.norm_eps = static_cast<float>(eps);
  a.token = token.data_ptr<int64_t>();
  a.logp = logp.data_ptr<float>();
  a.workspace = workspace.data_ptr();
  check_cuda(skinny_gemm(a, at::cuda::getCurrentCUDAStream()), "skinny_norm_greedy_head");
  return {token, logp};
}

}  // namespace cuda
}  // namespace linearnexus
