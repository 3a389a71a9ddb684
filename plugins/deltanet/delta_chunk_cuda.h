// The delta-rule chunk kernels' launchers (delta_chunk.cu, delta_chunk_bwd.cu). No torch types: raw
// device pointers, sizes and a stream, so the .cu files compile with nvcc alone; the torch glue is
// delta_chunk_gpu.cpp.
//
// Per batch row b and head h, over t = 0 .. T-1, with S [D, D] fp32 (S_{-1} = s0 or zeros):
//   S_t = exp(g_t) (I - beta_t k_t^T k_t) S_{t-1} + beta_t k_t^T v_t,   o_t = q_t S_t
// i.e. core's delta_scan_recurrent (chunked_scan.h) with g undefined (deltanet) or one log-decay per
// head and token (gated_deltanet). q, k, v [D] rows (K = V = D, 64 or 128); beta, g, s0 and the state
// fp32; q, k, v and o fp32 or bf16 (one dtype). The matmuls take bf16 operands (fp32 inputs are
// rounded to bf16) and accumulate in fp32; the state stays fp32.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace linearnexus {
namespace deltanet {
namespace cuda {

enum class DType { F32, BF16 };

constexpr int64_t kChunk = 64;  // tokens per chunk
constexpr int64_t kVTile = 32;  // value channels per block of the two sequential passes
constexpr int kThreads = 128;   // 4 warps in every kernel; warp w owns rows 16 w .. 16 w + 15 of a chunk

inline int64_t delta_chunks(int64_t T) { return (T + kChunk - 1) / kChunk; }
inline bool delta_supported(int64_t D) { return D == 64 || D == 128; }

struct DeltaArgs {
  int64_t B = 0, T = 0, H = 0, D = 0;
  DType dtype = DType::F32;
  // [B, T, H, D]: (b, t, h, d) at q[(b * T + t) * q_row + h * D + d]; likewise k, v.
  const void *q = nullptr, *k = nullptr, *v = nullptr;
  int64_t q_row = 0, k_row = 0, v_row = 0;
  const float* beta = nullptr;  // [B, T, H]: (b, t, h) at beta[(b * T + t) * beta_row + h]
  int64_t beta_row = 0;
  const float* g = nullptr;  // [B, T, H] log-decays <= 0, rows g_row apart; null: no decay (deltanet)
  int64_t g_row = 0;
  const float* s0 = nullptr;  // [B, H, D, D] contiguous, or null (zeros)
};

// What the forward keeps for the backward (and uses itself between its kernels), every tensor
// contiguous, [B, H, ...]: the UT transform of each chunk and the state entering it.
struct DeltaSaved {
  float* gc = nullptr;   // [B, H, T] fp32: the cumulative log-decay inside the token's chunk
  void* ainv = nullptr;  // [B, H, T, kChunk] bf16: row t of (I + A)^-1 of its chunk
  void* w = nullptr;     // [B, H, T, D] bf16: (I + A)^-1 (beta exp(G) k)
  void* u = nullptr;     // [B, H, T, D] bf16: (I + A)^-1 (beta v)
  void* vn = nullptr;    // [B, H, T, D] bf16: v' = u - w S, what each token writes
  void* h = nullptr;     // [B, H, delta_chunks(T), D, D] bf16: the state entering each chunk
};

// o [B, T, H, D] contiguous in q's dtype; state [B, H, D, D] fp32 (after the last token); saved
// filled (all 16-byte aligned). Requires delta_supported(D).
cudaError_t delta_forward(const DeltaArgs& a, void* o, float* state, const DeltaSaved& saved, cudaStream_t stream);

// The gradients of a loss L(o, state) given dL/do and dL/dstate (delta_chunk_bwd.cu).
struct DeltaGrads {
  const void* dout = nullptr;     // [B, T, H, D] contiguous, q's dtype
  const float* dstate = nullptr;  // [B, H, D, D] contiguous, or null (zeros)
  float* dq = nullptr;            // [B, T, H, D] contiguous fp32; likewise dk, dv
  float* dk = nullptr;
  float* dv = nullptr;
  float* dbeta = nullptr;  // [B, T, H] contiguous
  float* dg = nullptr;     // [B, T, H] contiguous, or null (no g)
  float* ds0 = nullptr;    // [B, H, D, D]: dL/ds0 (written whether s0 was given or not)
  // Workspace, 16-byte aligned: [B, H, T, D] bf16 each (the local part of dv', dv', dw) and the
  // adjoint of the state leaving each chunk, [B, H, delta_chunks(T), D, D] bf16.
  void *dvl = nullptr, *dvn = nullptr, *dw = nullptr, *dh = nullptr;
};

cudaError_t delta_backward(const DeltaArgs& a, const DeltaSaved& saved, const DeltaGrads& g, cudaStream_t stream);

}  // namespace cuda
}  // namespace deltanet
}  // namespace linearnexus
