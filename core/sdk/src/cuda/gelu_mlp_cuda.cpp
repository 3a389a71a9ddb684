// GPT-2's MLP with GELU in cuBLASLt's epilogues (gelu_mlp_cuda.h).
//
// Why: ATen's path is up (a matmul writing pre) -> gelu (a kernel reading pre, writing a) -> down,
// and back: da = dout w_down (a matmul) -> gelu_backward (reading da and pre, writing dpre). The two
// elementwise kernels cost 6.9 ms of a gpt-small step at B = 64 (docs/benchmarks.md): passes over
// [B*T, 4C] at memory speed. cuBLASLt applies GELU (its tanh form, GPT-2's) in the up-projection's
// epilogue, on tiles still in registers, writing pre beside a (GELU_AUX, for backward), and GELU's
// derivative in the epilogue of the matmul that produces da (DGELU, reading pre): no elementwise
// pass is left. Without autograd (evaluation, decoding, checkpointed forwards) the forward epilogue
// is GELU alone: no pre is written. Where cuBLASLt has no kernel for a case (an odd width, an
// unaligned view) the same node runs the ops: matmul, at::gelu / gelu_backward.
#include "gelu_mlp_cuda.h"

#include <torch/autograd.h>

#include <c10/cuda/CUDAGuard.h>

#include "lt_matmul.h"

namespace linearnexus {
namespace cuda {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// a = gelu(x w_up^T) [M, H], with pre = x w_up^T in `pre` when it is defined.
at::Tensor up_gelu(const at::Tensor& x, const at::Tensor& w_up, at::Tensor pre) {
  auto a = at::empty({x.size(0), w_up.size(0)}, x.options());
  if (lt_matmul(x, false, w_up, true, a, 0.f, pre.defined() ? CUBLASLT_EPILOGUE_GELU_AUX : CUBLASLT_EPILOGUE_GELU, pre))
    return a;
  if (!pre.defined()) return at::gelu(at::mm(x, w_up.t()), "tanh");
  at::mm_out(pre, x, w_up.t());
  return at::gelu(pre, "tanh");
}

struct GeluMlp : public torch::autograd::Function<GeluMlp> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w_up,
                            const at::Tensor& w_down) {
    // x: [M, C], w_up: [H, C], w_down: [C, H], contiguous, one dtype
    const c10::cuda::CUDAGuard guard(x.device());
    auto pre = at::empty({x.size(0), w_up.size(0)}, x.options());  // [M, H], GELU's input
    auto a = up_gelu(x, w_up, pre);                                // [M, H]
    ctx->save_for_backward({x, w_up, w_down, pre, a});
    return at::mm(a, w_down.t());  // [M, C]
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &w_up = saved[1], &w_down = saved[2], &pre = saved[3], &a = saved[4];
    const c10::cuda::CUDAGuard guard(x.device());
    auto dout = grads[0].to(x.scalar_type()).contiguous();  // [M, C]
    auto dpre = at::empty_like(pre);                        // [M, H] = (dout w_down) * gelu'(pre)
    if (!lt_matmul(dout, false, w_down, false, dpre, 0.f, CUBLASLT_EPILOGUE_DGELU, pre))
      dpre = at::gelu_backward(at::mm(dout, w_down), pre, "tanh");
    return {at::mm(dpre, w_up), at::mm(dpre.t(), x), at::mm(dout.t(), a)};  // dx [M, C], dw_up [H, C], dw_down [C, H]
  }
};

}  // namespace

at::Tensor gelu_mlp(const at::Tensor& x, const at::Tensor& w_up, const at::Tensor& w_down) {
  // x: [..., C] -> [..., C]
  const int64_t C = x.size(-1);
  auto x2 = x.reshape({-1, C}).contiguous();
  auto wu = w_up.contiguous(), wd = w_down.contiguous();
  at::Tensor out;
  if (x2.size(0) == 0) {
    out = at::mm(at::gelu(at::mm(x2, wu.t()), "tanh"), wd.t());
  } else if (at::GradMode::is_enabled()) {
    out = GeluMlp::apply(x2, wu, wd);
  } else {
    const c10::cuda::CUDAGuard guard(x.device());
    out = at::mm(up_gelu(x2, wu, at::Tensor()), wd.t());
  }
  auto shape = x.sizes().vec();
  shape.back() = wd.size(0);
  return out.view(shape);
}

}  // namespace cuda
}  // namespace linearnexus
