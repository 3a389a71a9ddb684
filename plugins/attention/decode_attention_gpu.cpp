// The torch side of the CUDA split-KV decode attention (declared in decode_attention_gpu.h). Compiled
// only where LibTorch has CUDA; elsewhere cuda_stubs.cpp stands in (decode_attention_applies() is
// false there).
#include "decode_attention_gpu.h"

#include <linearnexus/cuda_glue.h>
#include <linearnexus/error.h>

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <cstdint>

#include "decode_attention_cuda.h"

namespace linearnexus {
namespace attention {

namespace {

bool aligned16(const at::Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0; }

// [B, Hkv, L, D] with unit stride along D and every row start 16-byte aligned.
bool kv_rows(const at::Tensor& t) {
  const int64_t vec = 16 / static_cast<int64_t>(t.element_size());
  return t.dim() == 4 && t.stride(3) == 1 && aligned16(t) && t.stride(0) % vec == 0 && t.stride(1) % vec == 0 &&
         t.stride(2) % vec == 0;
}

}  // namespace

bool decode_attention_applies(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                              const at::Tensor& key_padding) {
  if (!q.is_cuda() || q.dim() != 3 || k.dim() != 4 || v.sizes() != k.sizes()) return false;
  const auto dt = q.scalar_type();
  if ((dt != at::kFloat && dt != at::kBFloat16) || k.scalar_type() != dt || v.scalar_type() != dt) return false;
  if (k.device() != q.device() || v.device() != q.device()) return false;
  const int64_t B = q.size(0), H = q.size(1), D = q.size(2);
  if (k.size(0) != B || k.size(3) != D || k.size(1) <= 0 || H % k.size(1) != 0 || k.size(2) <= 0) return false;
  if (!cuda::decode_attention_supports(D) || q.stride(2) != 1 || !kv_rows(k) || !kv_rows(v)) return false;
  if (key_padding.defined() &&
      (key_padding.scalar_type() != at::kBool || key_padding.dim() != 2 || key_padding.size(0) != B ||
       key_padding.size(1) < k.size(2) || key_padding.stride(1) != 1 || key_padding.device() != q.device()))
    return false;
  return true;
}

at::Tensor decode_attention_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                 const at::Tensor& key_padding, const at::Tensor& slot, int64_t chunk) {
  // q: [B, H, D]; k, v: [B, Hkv, L, D]; key_padding: [B, >= L] bool or undefined; slot: [1] int64
  if (!decode_attention_applies(q, k, v, key_padding) || !slot.defined() || slot.numel() != 1 ||
      slot.scalar_type() != at::kLong || slot.device() != q.device())
    throw Error(
        "attention: CUDA decode attention: q [B, H, D], k, v [B, Hkv, L, D] (fp32/bf16, D 64 or 128, 16-byte "
        "aligned rows), key_padding bool [B, >= L] and slot int64 [1] on one CUDA device expected");
  const c10::cuda::CUDAGuard guard(q.device());
  cuda::DecodeAttentionArgs a;
  a.B = q.size(0), a.H = q.size(1), a.D = q.size(2), a.Hkv = k.size(1), a.L = k.size(2);
  a.bf16 = q.scalar_type() == at::kBFloat16;
  a.q = q.data_ptr(), a.q_sb = q.stride(0), a.q_sh = q.stride(1);
  a.k = k.data_ptr(), a.k_sb = k.stride(0), a.k_sh = k.stride(1), a.k_sl = k.stride(2);
  a.v = v.data_ptr(), a.v_sb = v.stride(0), a.v_sh = v.stride(1), a.v_sl = v.stride(2);
  if (key_padding.defined())
    a.key_padding = reinterpret_cast<const uint8_t*>(key_padding.data_ptr<bool>()), a.pad_sb = key_padding.stride(0);
  a.slot = slot.data_ptr<int64_t>();
  a.chunk = chunk;
  a.sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const auto plan = cuda::decode_attention_plan(a);
  auto out = at::empty({a.B, a.H, a.D}, q.options());
  const int64_t ws_floats = cuda::decode_attention_workspace_floats(a, plan);
  auto ws = ws_floats > 0 ? at::empty({ws_floats}, q.options().dtype(at::kFloat)) : at::Tensor();
  check_cuda(cuda::decode_attention(a, plan, ws.defined() ? ws.data_ptr<float>() : nullptr, out.data_ptr(),
                                    at::cuda::getCurrentCUDAStream()),
             "attention: split-KV decode attention");
  return out;
}

}  // namespace attention
}  // namespace linearnexus
