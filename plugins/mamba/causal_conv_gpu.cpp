// The torch side of the CUDA causal conv + SiLU (declared in causal_conv_gpu.h). Compiled only where
// LibTorch has CUDA; elsewhere cuda_stubs.cpp stands in (cuda_conv_applies() is false there).
#include "causal_conv_gpu.h"

#include <linearnexus/error.h>

#include <torch/autograd.h>

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <string>

#include "causal_conv_cuda.h"
#include <linearnexus/cuda_glue.h>

namespace linearnexus {
namespace mamba {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// x [B, T, D] in the kernels' layout (kernel_rows): kept as it is; anything else made contiguous.
at::Tensor rows(const at::Tensor& x) { return kernel_rows(x) ? x : x.contiguous(); }

cuda::ConvArgs args_of(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias, const at::Tensor& history) {
  cuda::ConvArgs a;
  a.B = x.size(0), a.T = x.size(1), a.D = x.size(2), a.K = w.size(1);
  a.bf16 = x.scalar_type() == at::kBFloat16;
  a.x = x.data_ptr(), a.x_row = x.stride(1);
  a.w = w.data_ptr<float>();
  a.bias = bias.numel() > 0 ? bias.data_ptr<float>() : nullptr;
  a.history = history.numel() > 0 ? history.data_ptr<float>() : nullptr;
  return a;
}

at::Tensor run_forward(const cuda::ConvArgs& a, const at::Tensor& x) {
  auto y = at::empty({a.B, a.T, a.D}, x.options());
  check_cuda(cuda::conv_silu_forward(a, y.data_ptr(), at::cuda::getCurrentCUDAStream()), "causal conv forward");
  return y;
}

// The autograd node: saves x (already alive as the in-projection's output) and the parameters;
// backward recomputes the pre-activation.
struct ConvSiluFunction : public torch::autograd::Function<ConvSiluFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias) {
    // x: [B, T, D]; w: [D, K]; bias: [D] or empty
    ctx->save_for_backward({x, w, bias});
    return run_forward(args_of(x, w, bias, at::Tensor()), x);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto v = ctx->get_saved_variables();
    const at::Tensor &x = v[0], &w = v[1], &bias = v[2];
    const auto a = args_of(x, w, bias, at::Tensor());
    auto dy = grads[0].to(x.scalar_type()).contiguous();
    auto dx = at::empty({a.B, a.T, a.D}, x.options());
    const int64_t rows_out = a.B * cuda::conv_backward_tiles(a.T);
    auto dw = at::empty({rows_out, a.D, a.K}, w.options());
    auto db = bias.numel() > 0 ? at::empty({rows_out, a.D}, w.options()) : at::Tensor();
    check_cuda(
        cuda::conv_silu_backward(a, dy.data_ptr(), dx.data_ptr(), a.D, dw.data_ptr<float>(),
                                 db.defined() ? db.data_ptr<float>() : nullptr, at::cuda::getCurrentCUDAStream()),
        "causal conv backward");
    return {dx, dw.sum(0), db.defined() ? db.sum(0) : at::Tensor()};
  }
};

}  // namespace

bool cuda_conv_applies(const at::Tensor& x, int64_t taps) {
  return x.is_cuda() && taps >= 1 && taps <= cuda::kMaxConvTaps &&
         (x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16);
}

at::Tensor conv_silu_cuda(const at::Tensor& x_in, const at::Tensor& weight, const at::Tensor& bias,
                          const at::Tensor& history, at::Tensor* new_history) {
  // x: [B, T, D]; weight: [D, K]; bias: [D]; history: [B, D, K-1]
  const int64_t K = weight.dim() == 2 ? weight.size(1) : 0;
  if (!cuda_conv_applies(x_in, K) || x_in.dim() != 3 || weight.size(0) != x_in.size(2) ||
      (bias.defined() && bias.numel() != x_in.size(2)) ||
      (history.defined() && (history.dim() != 3 || history.size(0) != x_in.size(0) || history.size(1) != x_in.size(2) ||
                             history.size(2) != K - 1)))
    throw Error("mamba: CUDA causal conv: x [B, T, D] fp32/bf16 on CUDA, weight [D, K <= " +
                std::to_string(cuda::kMaxConvTaps) + "], bias [D], history [B, D, K-1] expected");
  const c10::cuda::CUDAGuard guard(x_in.device());
  auto x = rows(x_in);
  auto w = weight.to(at::kFloat).contiguous();
  auto b = bias.defined() ? bias.to(at::kFloat).contiguous() : at::empty({0}, w.options());
  if (new_history) {
    // The last K-1 inputs, the history's tail first when x is shorter than that.
    auto xt = x.transpose(1, 2);  // [B, D, T]
    auto h = history.defined() ? at::cat({history.to(x.scalar_type()), xt}, -1) : at::constant_pad_nd(xt, {K - 1, 0});
    *new_history = h.narrow(-1, h.size(-1) - (K - 1), K - 1).contiguous();
  }
  const bool grad = at::GradMode::is_enabled() &&
                    (x.requires_grad() || weight.requires_grad() || (bias.defined() && bias.requires_grad()));
  if (history.defined() || !grad) {
    // Prefill and evaluation (a history only comes with a cache): no backward.
    if (grad && history.defined())
      throw Error("mamba: CUDA causal conv: no gradient through a cached history (prefill runs without grad)");
    auto hist = history.defined() ? history.to(at::kFloat).contiguous() : at::empty({0}, w.options());
    return run_forward(args_of(x, w, b, hist), x);
  }
  return ConvSiluFunction::apply(x, w, b);
}

}  // namespace mamba
}  // namespace linearnexus
