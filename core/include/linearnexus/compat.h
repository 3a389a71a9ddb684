#pragma once
// Every difference between the LibTorch versions we build against (Debian's 1.13, the GPU
// machine's 2.x) lives here and nowhere else.
#include <ATen/ATen.h>
#include <torch/version.h>

#define LINEARNEXUS_TORCH_AT_LEAST(major, minor) \
  (TORCH_VERSION_MAJOR > (major) || (TORCH_VERSION_MAJOR == (major) && TORCH_VERSION_MINOR >= (minor)))

// at::scaled_dot_product_attention (flash / memory-efficient kernels) arrived in 2.0.
#define LINEARNEXUS_HAS_SDPA LINEARNEXUS_TORCH_AT_LEAST(2, 0)

namespace linearnexus::compat {

// Causal or masked attention. q [B,H,Tq,D], k/v [B,H,Tk,D]; mask [B or 1, 1, Tq, Tk] bool (true =
// attend) or undefined with is_causal for the plain causal case (only when Tq == Tk).
inline at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const at::Tensor& mask, bool is_causal, double dropout_p) {
#if LINEARNEXUS_HAS_SDPA
  if (mask.defined()) return at::scaled_dot_product_attention(q, k, v, mask, dropout_p, false);
  return at::scaled_dot_product_attention(q, k, v, {}, dropout_p, is_causal);
#else
  const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(-1)));
  auto att = at::matmul(q, k.transpose(-2, -1)) * scale;  // [B,H,Tq,Tk]
  if (mask.defined()) {
    att = att.masked_fill(mask.logical_not(), -std::numeric_limits<float>::infinity());
  } else if (is_causal) {
    auto causal = at::ones({q.size(-2), k.size(-2)}, q.options().dtype(at::kBool)).tril();
    att = att.masked_fill(causal.logical_not(), -std::numeric_limits<float>::infinity());
  }
  att = at::softmax(att, -1);
  if (dropout_p > 0) att = at::dropout(att, dropout_p, true);
  return at::matmul(att, v);
#endif
}

}  // namespace linearnexus::compat
