// The torch side of decode_attention.cu (declared in decode_attention.h): checks and layout. Without
// CUDA (LINEARNEXUS_ATTENTION_CUDA undefined: every CPU build) decode_attention_applies() is false.
#include "decode_attention.h"

#include <linearnexus/error.h>

#include <cmath>
#include <string>

#ifdef LINEARNEXUS_ATTENTION_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "decode_attention_cuda.h"
#endif

namespace linearnexus {
namespace attention {

#ifndef LINEARNEXUS_ATTENTION_CUDA
bool decode_attention_applies(const at::Tensor&, const at::Tensor&) { return false; }
at::Tensor decode_attention_cuda(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&) {
  throw Error("attention: the CUDA decode kernel is not in this build (LibTorch without CUDA)");
}
#else
bool decode_attention_applies(const at::Tensor& q, const at::Tensor& k) {
  return q.is_cuda() && q.dim() == 4 && q.size(2) == 1 && k.dim() == 4 && k.scalar_type() == q.scalar_type() &&
         (q.scalar_type() == at::kFloat || q.scalar_type() == at::kBFloat16) && cuda::supports(q.size(3)) &&
         k.size(3) == q.size(3) && k.size(0) == q.size(0) && q.size(1) % k.size(1) == 0;
}

at::Tensor decode_attention_cuda(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
                                 const at::Tensor& bias_in) {
  // q: [B, H, 1, D]; k, v: [B, Hkv, L, D]; bias: [B or 1, 1, 1, L]
  if (!decode_attention_applies(q_in, k_in) || v_in.sizes() != k_in.sizes() || bias_in.size(-1) != k_in.size(2))
    throw Error("attention: decode kernel: unsupported shapes or dtypes");
  const c10::cuda::CUDAGuard guard(q_in.device());
  auto q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.to(q.scalar_type()).contiguous();
  auto bias = bias_in.to(at::kFloat).reshape({-1, k.size(2)}).contiguous();  // [B or 1, L]
  cuda::DecodeAttentionArgs a;
  a.B = q.size(0), a.H = q.size(1), a.Hkv = k.size(1), a.L = k.size(2), a.D = q.size(3);
  a.bf16 = q.scalar_type() == at::kBFloat16;
  a.q = q.data_ptr(), a.k = k.data_ptr(), a.v = v.data_ptr();
  a.bias = bias.data_ptr<float>(), a.bias_row = bias.size(0) == 1 ? 0 : a.L;
  a.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(a.D)));
  auto out = at::empty({a.B, a.H, 1, a.D}, q.options());
  auto work = at::empty({a.B * a.H * cuda::chunks(a.L) * (a.D + 2)}, q.options().dtype(at::kFloat));
  const cudaError_t e = cuda::decode_attention(a, out.data_ptr(), work.data_ptr<float>(), at::cuda::getCurrentCUDAStream());
  if (e != cudaSuccess) throw Error(std::string("attention: CUDA decode kernel failed: ") + cudaGetErrorString(e));
  return out;
}
#endif

}  // namespace attention
}  // namespace linearnexus
