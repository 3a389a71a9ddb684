// Single-query attention over a static KV cache on CUDA (decode_attention.cu): what the attention
// block's static decoding step uses where it applies; SDPA elsewhere. Inference only: no autograd.
#pragma once

#include <ATen/ATen.h>

namespace linearnexus {
namespace attention {

// Whether this build has the kernel and it takes q [B, H, 1, D] and the cache k (same dtype, fp32
// or bf16, on CUDA, D dividing 128).
bool decode_attention_applies(const at::Tensor& q, const at::Tensor& k);

// q [B, H, 1, D]; k, v [B, Hkv, L, D] (the cache itself, before any GQA repeat); bias [B or 1, 1, 1, L]
// fp32, added to the scores (0 = visible, -inf = not) -> softmax(q k^T / sqrt(D) + bias) v [B, H, 1, D]
// in q's dtype, with fp32 scores and sums.
at::Tensor decode_attention_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& bias);

}  // namespace attention
}  // namespace linearnexus
