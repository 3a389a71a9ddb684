// The CUDA LM head + cross-entropy (lm_head_loss_cuda.h): cuBLAS(Lt) for the three matmuls of a chunk,
// cross_entropy.cu between them, and the chunk's logits buffer reused for its gradient.
#include "lm_head_loss_cuda.h"

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <string>

#include "kernels.h"
#include "lt_matmul.h"
#include "linearnexus/cuda_glue.h"
#include "linearnexus/error.h"

namespace linearnexus {
namespace cuda {

HeadLossSums lm_head_loss_sums(const at::Tensor& h, const at::Tensor& W, const at::Tensor& targets,
                               at::ScalarType compute_dtype, bool with_grad) {
  // h: [N, C], W: [V, C], targets: [N]
  if (compute_dtype != at::kBFloat16 && compute_dtype != at::kFloat)
    throw Error("lm_head_loss on CUDA computes in bf16 or fp32, not " + std::string(c10::toString(compute_dtype)));
  const c10::cuda::CUDAGuard guard(h.device());
  const int64_t N = h.size(0), V = W.size(0), C = h.size(1), Vp = (V + 63) / 64 * 64;
  const auto dtype = compute_dtype == at::kBFloat16 ? DType::BF16 : DType::F32;
  // Rows per chunk: ~1 GiB of logits (10,624 rows at V = 50257 in bf16), a multiple of 128.
  const int64_t bytes_per_row = Vp * static_cast<int64_t>(c10::elementSize(compute_dtype));
  const int64_t rows = std::min(N, std::max<int64_t>(128, (int64_t{1} << 30) / bytes_per_row / 128 * 128));
  auto hq = h.to(compute_dtype).contiguous();
  auto Wp = at::constant_pad_nd(W.to(compute_dtype), {0, 0, 0, Vp - V}).contiguous();  // [Vp, C]
  auto tgt = targets.to(at::kLong).contiguous();
  auto loss_rows = at::empty({N}, h.options().dtype(at::kFloat));
  HeadLossSums out;
  at::Tensor grad_Wp;
  if (with_grad) {
    out.grad_h = at::empty({N, C}, h.options());
    grad_Wp = at::zeros({Vp, C}, W.options().dtype(at::kFloat));
  }
  auto logits = at::empty({std::min(rows, N), Vp}, hq.options());
  const auto stream = at::cuda::getCurrentCUDAStream();
  for (int64_t r0 = 0; r0 < N; r0 += rows) {
    const int64_t n = std::min(rows, N - r0);
    auto hc = hq.narrow(0, r0, n);
    auto lc = logits.narrow(0, 0, n);
    at::mm_out(lc, hc, Wp.t());  // [n, Vp]
    const cudaError_t e = softmax_cross_entropy_rows(lc.data_ptr(), dtype, n, V, Vp, tgt.data_ptr<int64_t>() + r0,
                                                     loss_rows.data_ptr<float>() + r0, with_grad, stream);
    check_cuda(e, "lm_head_loss: the cross-entropy kernel");
    if (!with_grad) continue;
    // lc now holds d(loss)/d(logits) = softmax - onehot (zero in the padding columns).
    auto gh = out.grad_h.narrow(0, r0, n);  // [n, C], rows of a contiguous tensor: contiguous
    if (gh.scalar_type() == lc.scalar_type())
      at::mm_out(gh, lc, Wp);
    else
      gh.copy_(at::mm(lc, Wp));
    // [Vp, C]: the chunks' products summed in fp32 by the matmul itself (beta = 1), not each rounded
    // to bf16 and added by another pass.
    if (!lt_matmul(lc, true, hc, false, grad_Wp, 1.f)) grad_Wp.add_(at::mm(lc.t(), hc));
  }
  out.loss = loss_rows.sum();
  if (with_grad) out.grad_W = grad_Wp.narrow(0, 0, V);
  return out;
}

}  // namespace cuda
}  // namespace linearnexus
