// Split-KV single-query attention on CUDA for the static decode step: the torch side (checks,
// strides, workspace) of the kernels in decode_attention.cu. attention.cpp uses it behind
// LINEARNEXUS_DECODE_ATTENTION=splitkv; a build without CUDA compiles cuda_stubs.cpp instead.
#pragma once

#include <ATen/ATen.h>

namespace linearnexus {
namespace attention {

// Whether this build has the kernel and it takes these operands: q [B, H, D], k, v [B, Hkv, L, D]
// on one CUDA device, one dtype (fp32 or bf16), D 64 or 128, H a multiple of Hkv, K and V rows
// 16-byte aligned with unit stride along D; key_padding (when defined) bool [B, >= L] on that device.
// False: the caller keeps SDPA.
bool decode_attention_applies(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                              const at::Tensor& key_padding);

// o [B, H, D] (contiguous, q's dtype) = softmax(q k^T / sqrt(D)) v over the columns j <= slot with
// key_padding[b, j] (undefined: none is padding); query head h reads KV head h / (H / Hkv). slot: [1]
// int64 on q's device, read there (never on the host), so a captured CUDA graph replays it at every
// position. Throws when !decode_attention_applies.
at::Tensor decode_attention_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                 const at::Tensor& key_padding, const at::Tensor& slot, int64_t chunk = 0);

}  // namespace attention
}  // namespace linearnexus
