// The CUDA half of lm_head_loss (loss.h): the LM head and cross-entropy in row chunks, the loss by
// cross_entropy.cu's kernel and the gradients in the same pass. Core-internal; built only with CUDA.
#pragma once

#include <ATen/ATen.h>

namespace linearnexus {
namespace cuda {

struct HeadLossSums {
  at::Tensor loss;    // 0-d fp32: the sum of the rows' losses (rows with target -1 add 0)
  at::Tensor grad_h;  // [N, C] in h's dtype: d(sum of losses)/dh, or undefined without grads
  at::Tensor grad_W;  // [V, C] fp32: d(sum of losses)/dW, or undefined without grads
};

// h [N, C], W [V, C], targets [N] int64 (-1 = no loss), all on one CUDA device. The matmuls run in
// compute_dtype (bf16 or fp32; h and W are cast once), on W padded with zero rows to a multiple of
// 64 (cuBLAS's aligned kernels), over chunks of at most ~1 GiB of logits.
HeadLossSums lm_head_loss_sums(const at::Tensor& h, const at::Tensor& W, const at::Tensor& targets,
                               at::ScalarType compute_dtype, bool with_grad);

}  // namespace cuda
}  // namespace linearnexus
