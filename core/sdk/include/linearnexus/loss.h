#pragma once
// The language-model losses, all in fp32 and all ignoring target -1.
#include <ATen/ATen.h>

namespace linearnexus {

// Cross-entropy of logits [B,T,V] against targets [B,T], in fp32; positions whose target is
// ignore_index (-1) carry no loss.
at::Tensor lm_loss(const at::Tensor& logits, const at::Tensor& targets);
// The same loss straight from the final hidden states [B,T,C] and the LM head's weight [V,C]
// (LMModel::next_token_loss): value and gradients equal lm_loss(hidden @ W^T, targets), without
// ever holding the [B*T, V] logits (the head and the loss run in row chunks in one autograd node).
// compute_dtype: the matmuls' dtype on CUDA (bf16 under autocast; Undefined = hidden's dtype); the
// loss and the softmax are fp32 either way. On CUDA a fused kernel (cuda/cross_entropy.cu) computes
// the loss and writes the logits' gradient in place; on the CPU the matmuls run in hidden's dtype.
at::Tensor lm_head_loss(const at::Tensor& hidden, const at::Tensor& head_weight, const at::Tensor& targets,
                        at::ScalarType compute_dtype = at::ScalarType::Undefined);
// log p(target) per position, fp32: logits [B,T,V], targets [B,T] -> [B,T], 0 where the target is -1.
// Summed over a row: the log-probability of its trained tokens (DPO's sequence log-likelihood).
at::Tensor token_log_probs(const at::Tensor& logits, const at::Tensor& targets);
// The loss of the curvature-estimate pass (Optimizer::wants_curvature_estimate): cross-entropy of
// logits [B,T,V] against labels drawn from the model's own output distribution,
// multinomial(softmax(logits)) per position (with the global RNG), mean over all B*T positions.
// Its gradient, squared and times B*T, is the Gauss-Newton-Bartlett diagonal Hessian estimate.
at::Tensor sampled_label_loss(const at::Tensor& logits);

}  // namespace linearnexus
