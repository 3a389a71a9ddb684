// The split-KV single-query attention kernels' launcher (implemented in decode_attention.cu). No
// torch types: raw device pointers, sizes, strides and a stream, so the .cu compiles with nvcc
// alone (and runs on the CPU in plugins/attention/emu); the torch glue is decode_attention_gpu.cpp.
//
// One decoded token per batch row b, at cache column s = *slot (read on the device):
//   o[b, h, :] = sum_j p_j v[b, h / G, j, :],  p = softmax_j(q[b, h, :] . k[b, h / G, j, :] / sqrt(D))
// over the visible columns j <= s with key_padding[b, j] (true = real token); G = H / Hkv query heads
// share a key/value head (GQA). q, k, v and o are fp32 or bf16 (one dtype); the sums are fp32.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace linearnexus {
namespace attention {
namespace cuda {

// Columns one CTA takes at most (its scores live in shared memory).
constexpr int64_t kMaxChunk = 256;

struct DecodeAttentionArgs {
  int64_t B = 0, H = 0, Hkv = 0, L = 0, D = 0;
  bool bf16 = false;
  const void* q = nullptr;  // [B, H, D]: (b, h, d) at q[b * q_sb + h * q_sh + d]
  int64_t q_sb = 0, q_sh = 0;
  // [B, Hkv, L, D]: (b, h, j, d) at k[b * k_sb + h * k_sh + j * k_sl + d] (v alike). 16-byte aligned
  // rows: the pointers and strides are multiples of 16 bytes.
  const void* k = nullptr;
  const void* v = nullptr;
  int64_t k_sb = 0, k_sh = 0, k_sl = 0, v_sb = 0, v_sh = 0, v_sl = 0;
  const uint8_t* key_padding = nullptr;  // [B, >= L] bool, row b at key_padding[b * pad_sb]; null: none
  int64_t pad_sb = 0;
  const int64_t* slot = nullptr;  // [1] on the device: the new token's column
  int64_t chunk = 0;              // columns per split, <= kMaxChunk; 0: decode_attention_plan chooses
  int sms = 132;                  // the device's multiprocessors (the plan fills them)
};

// Whether the kernels take head_dim D (64 or 128).
bool decode_attention_supports(int64_t D);

// The columns per split and the number of splits (ceil(L / chunk)) the launch uses: splits so that
// B * Hkv * ceil(G / 8) * splits is about two waves of CTAs over the whole cache, chunks of 64 to
// kMaxChunk columns (a.chunk, when set, wins).
struct DecodeAttentionPlan {
  int64_t chunk = 0, splits = 0;
};
DecodeAttentionPlan decode_attention_plan(const DecodeAttentionArgs& a);

// fp32 workspace the launch needs for plan.splits > 1: the partial (o, max, sum) of every split.
int64_t decode_attention_workspace_floats(const DecodeAttentionArgs& a, const DecodeAttentionPlan& plan);

// out: [B, H, D] contiguous in q's dtype. workspace: decode_attention_workspace_floats floats (unused,
// may be null, when plan.splits == 1). Two kernels (the splits, then their merge), one when a single
// split covers the cache; both a fixed launch whatever the slot, so a captured graph replays them.
cudaError_t decode_attention(const DecodeAttentionArgs& a, const DecodeAttentionPlan& plan, float* workspace, void* out,
                             cudaStream_t stream);

}  // namespace cuda
}  // namespace attention
}  // namespace linearnexus
