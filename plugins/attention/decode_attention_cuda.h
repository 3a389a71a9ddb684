// The single-query attention kernel of static decoding (decode_attention.cu): raw device pointers,
// sizes and a stream, so the .cu compiles with nvcc alone; decode_attention.cpp is the torch side.
//
// For each row b and query head h (key/value head h / (H / Hkv)), over the L cached keys:
//   out[b, h] = softmax(scale * q[b, h] . K[b, kv, j] + bias[b, j]) . V[b, kv, j]
// in fp32 whatever the input dtype (fp32 or bf16), split over chunks of keys so that a batch of one
// still fills the GPU ("flash decoding"): one kernel writes each chunk's max, sum and partial output,
// a second combines them.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace linearnexus {
namespace attention {
namespace cuda {

// Keys per chunk of the first kernel, and the threads of its blocks.
constexpr int kChunk = 256;
constexpr int kThreads = 128;

struct DecodeAttentionArgs {
  int64_t B = 0, H = 0, Hkv = 0, L = 0, D = 0;
  bool bf16 = false;
  const void* q = nullptr;    // [B, H, D] contiguous
  const void* k = nullptr;    // [B, Hkv, L, D] contiguous
  const void* v = nullptr;    // [B, Hkv, L, D] contiguous
  const float* bias = nullptr;  // [B or 1, L] contiguous: 0 or -inf
  int64_t bias_row = 0;       // L, or 0 when one row serves every b
  float scale = 1.0f;
};

inline int64_t chunks(int64_t L) { return (L + kChunk - 1) / kChunk; }
// D must divide kThreads (and be at most kThreads).
inline bool supports(int64_t D) { return D > 0 && D <= kThreads && kThreads % D == 0; }

// out [B, H, D] contiguous in the input dtype; work: B * H * chunks(L) * (D + 2) floats.
cudaError_t decode_attention(const DecodeAttentionArgs& a, void* out, float* work, cudaStream_t stream);

}  // namespace cuda
}  // namespace attention
}  // namespace linearnexus
