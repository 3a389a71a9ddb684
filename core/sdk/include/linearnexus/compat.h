#pragma once
// Every difference between the LibTorch versions we build against (Debian's 1.13, the GPU
// machine's 2.x) lives here and nowhere else.
#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <torch/version.h>

#define LINEARNEXUS_TORCH_AT_LEAST(major, minor) \
  (TORCH_VERSION_MAJOR > (major) || (TORCH_VERSION_MAJOR == (major) && TORCH_VERSION_MINOR >= (minor)))

// at::scaled_dot_product_attention (flash / memory-efficient kernels) arrived in 2.0.
#define LINEARNEXUS_HAS_SDPA LINEARNEXUS_TORCH_AT_LEAST(2, 0)

// at::rms_norm arrived in 2.4 (a fused CUDA kernel behind it in recent 2.x).
#define LINEARNEXUS_HAS_RMS_NORM LINEARNEXUS_TORCH_AT_LEAST(2, 4)
// at::Context's switch for the cuDNN attention backend.
#define LINEARNEXUS_HAS_CUDNN_SDPA_SWITCH LINEARNEXUS_TORCH_AT_LEAST(2, 5)

// c10d's process groups (Gloo, NCCL) derive from c10d::Backend since 2.0, from c10d::ProcessGroup
// before (core/src/distributed.cpp picks the base class by this).
#define LINEARNEXUS_C10D_BACKEND_BASE LINEARNEXUS_TORCH_AT_LEAST(2, 0)

// Multi-tensor optimizer kernels: at::_fused_adamw_ (one launch updates a whole list of tensors),
// _foreach_norm and _foreach_mul_ by a 0-d tensor. Used on CUDA only; the CPU keeps the per-tensor ops.
#define LINEARNEXUS_HAS_MULTI_TENSOR_OPS LINEARNEXUS_TORCH_AT_LEAST(2, 1)

// The at::autocast API took a device type in 2.4; 1.13 has CUDA-only functions.
#define LINEARNEXUS_AUTOCAST_BY_DEVICE LINEARNEXUS_TORCH_AT_LEAST(2, 4)

namespace linearnexus::compat {

// While alive, CUDA ops on this thread run under autocast to `dtype` (bf16): matmuls, linear layers
// and attention in bf16 on fp32 weights (cast per use; the casts of a weight are cached until the
// outermost guard ends), reductions, softmax and losses in fp32. Backward runs outside the guard
// and follows the casts autograd recorded, so gradients land on the fp32 weights as fp32. A guard
// with `enabled` false does nothing (fp32 runs, CPU runs).
class AutocastGuard {
 public:
  AutocastGuard(bool enabled, at::ScalarType dtype) : active_(enabled) {
    if (!active_) return;
#if LINEARNEXUS_AUTOCAST_BY_DEVICE
    prev_enabled_ = at::autocast::is_autocast_enabled(at::kCUDA);
    prev_dtype_ = at::autocast::get_autocast_dtype(at::kCUDA);
    at::autocast::set_autocast_enabled(at::kCUDA, true);
    at::autocast::set_autocast_dtype(at::kCUDA, dtype);
#else
    prev_enabled_ = at::autocast::is_enabled();
    prev_dtype_ = at::autocast::get_autocast_gpu_dtype();
    at::autocast::set_enabled(true);
    at::autocast::set_autocast_gpu_dtype(dtype);
#endif
    at::autocast::increment_nesting();
  }
  ~AutocastGuard() {
    if (!active_) return;
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
#if LINEARNEXUS_AUTOCAST_BY_DEVICE
    at::autocast::set_autocast_enabled(at::kCUDA, prev_enabled_);
    at::autocast::set_autocast_dtype(at::kCUDA, prev_dtype_);
#else
    at::autocast::set_enabled(prev_enabled_);
    at::autocast::set_autocast_gpu_dtype(prev_dtype_);
#endif
  }
  AutocastGuard(const AutocastGuard&) = delete;
  AutocastGuard& operator=(const AutocastGuard&) = delete;

 private:
  bool active_, prev_enabled_ = false;
  at::ScalarType prev_dtype_ = at::kBFloat16;
};

// The dtype CUDA autocast computes matmuls in while it is on (bf16 under precision: bf16), else
// Undefined: fused layers write their outputs in it, so the next matmul needs no cast.
inline at::ScalarType cuda_autocast_dtype() {
#if LINEARNEXUS_AUTOCAST_BY_DEVICE
  return at::autocast::is_autocast_enabled(at::kCUDA) ? at::autocast::get_autocast_dtype(at::kCUDA)
                                                      : at::ScalarType::Undefined;
#else
  return at::autocast::is_enabled() ? at::autocast::get_autocast_gpu_dtype() : at::ScalarType::Undefined;
#endif
}

// Causal or masked attention. q [B,H,Tq,D], k/v [B,H,Tk,D]; mask [B or 1, 1, Tq, Tk] bool (true =
// attend) or undefined with is_causal for the plain causal case (only when Tq == Tk).
// On CUDA (2.5+), cuDNN's attention backend only where queries and keys are the same length
// (training, prefill): there it beat flash attention by a third at gpt-small's training shape, but
// it builds an execution plan for every new key length, and decoding, whose key length grows by one
// token a step, spent ~80 ms a token planning (docs/benchmarks.md). The switch is a plain global
// flag read when the backend is chosen, so setting it per call costs nothing.
inline at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask,
                            bool is_causal, double dropout_p) {
#if LINEARNEXUS_HAS_CUDNN_SDPA_SWITCH
  if (q.is_cuda()) at::globalContext().setSDPUseCuDNN(q.size(-2) == k.size(-2));
#endif
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

// x [..., C] * rsqrt(mean(x^2) + eps) * weight [C], in x's dtype (fp32 for the residual stream).
inline at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
#if LINEARNEXUS_HAS_RMS_NORM
  return at::rms_norm(x, {x.size(-1)}, weight, eps);
#else
  return x * at::rsqrt(x.pow(2).mean(-1, true) + eps) * weight;
#endif
}

}  // namespace linearnexus::compat

// CUDA graphs (core/src/cuda_graph.cpp): captured decoding steps. at::cuda::CUDAGraph's capture API
// settled in 2.0; LINEARNEXUS_CUDA_BUILD is defined for core where LibTorch has CUDA.
#if defined(LINEARNEXUS_CUDA_BUILD) && LINEARNEXUS_TORCH_AT_LEAST(2, 0)
#define LINEARNEXUS_HAS_CUDA_GRAPHS 1
#else
#define LINEARNEXUS_HAS_CUDA_GRAPHS 0
#endif
