// The Mamba-2 (SSD) chunk kernels' launchers (ssd_chunk.cu). No torch types: raw device pointers,
// sizes and a stream, so the .cu compiles with nvcc alone; the torch glue is ssd_chunk_gpu.cpp.
//
// Per batch row b and head h (group gr = h / (H / G)), over t = 0 .. T-1, with S [N, P] fp32:
//   S_t = exp(g_t) S_{t-1} + (dt_t B_t)^T x_t          B_t, C_t [N] of group gr; x_t [P]; g_t <= 0
//   y_t = C_t S_t                                      [P]
// i.e. core's decay scan (chunked_scan.h) with q = C, k = dt B, v = x, one log-decay per head. B and
// C stay per group; dt (per head) scales them inside the kernel. S_{-1} = s0 (or zeros).
// x, B, C and y are fp32 or bf16 (one dtype); dt, g, s0 and the state are fp32. The matmuls take
// bf16 operands (fp32 inputs are rounded to bf16) and accumulate in fp32.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace linearnexus {
namespace mamba2 {
namespace cuda {

enum class DType { F32, BF16 };

constexpr int64_t kChunk = 64;    // tokens per chunk
constexpr int64_t kPTile = 32;    // head channels (P) per state-pass block and per output pass
constexpr int kSsdThreads = 128;  // 4 warps in both kernels

inline int64_t ssd_chunks(int64_t T) { return (T + kChunk - 1) / kChunk; }
// The sizes the kernels take: d_state 64 or 128, head_dim a multiple of kPTile up to 128 (the backward
// keeps x, dy, S and dS of a chunk in shared memory: ~140 KB at N = P = 128).
inline bool ssd_supported(int64_t N, int64_t P) {
  return (N == 64 || N == 128) && P > 0 && P % kPTile == 0 && P <= 128;
}

struct SsdArgs {
  int64_t B = 0, T = 0, H = 0, G = 0, N = 0, P = 0;
  DType dtype = DType::F32;
  const void* x = nullptr;  // [B, T, H, P]: (b, t, h, p) at x[(b * T + t) * x_row + h * P + p]
  int64_t x_row = 0;
  const void* Bm = nullptr;  // [B, T, G, N]: (b, t, gr, n) at Bm[(b * T + t) * B_row + gr * N + n]
  int64_t B_row = 0;
  const void* Cm = nullptr;  // [B, T, G, N] likewise
  int64_t C_row = 0;
  const float* dt = nullptr;  // [B, T, H]: (b, t, h) at dt[(b * T + t) * dt_row + h]; null = 1
  int64_t dt_row = 0;
  const float* g = nullptr;  // [B, T, H] log-decays <= 0, rows g_row apart
  int64_t g_row = 0;
  const float* s0 = nullptr;  // [B, H, N, P] contiguous, or null (zeros)
};

// Bytes of the workspace ssd_forward needs: the state entering every chunk, bf16
// [B, H, ssd_chunks(T), N, P] (kept for a backward; ssd_chunk.cu says why bf16).
inline size_t ssd_entering_bytes(const SsdArgs& a) {
  return static_cast<size_t>(a.B * a.H * ssd_chunks(a.T) * a.N * a.P) * 2;
}

// y [B, T, H, P] contiguous in x's dtype; state [B, H, N, P] fp32 contiguous (the state after the
// last token); entering: ssd_entering_bytes(a), 16-byte aligned. Requires ssd_supported(N, P).
cudaError_t ssd_forward(const SsdArgs& a, void* y, float* state, void* entering, cudaStream_t stream);

// The gradients of a loss L(y, state) given dL/dy and dL/dstate (ssd_chunk_bwd.cu).
struct SsdGrads {
  const void* dy = nullptr;       // [B, T, H, P] contiguous, x's dtype
  const float* dstate = nullptr;  // [B, H, N, P] contiguous, or null (zeros)
  void* dx = nullptr;             // [B, T, H, P] contiguous, x's dtype
  float* dB = nullptr;            // [B, T, G, N] contiguous, ZEROS on entry: the heads of a group add into it
  float* dC = nullptr;            // [B, T, G, N] likewise
  float* ddt = nullptr;           // [B, T, H] contiguous, or null (no dt)
  float* dg = nullptr;            // [B, T, H] contiguous
  float* ds0 = nullptr;           // [B, H, N, P]: dL/ds0 (written whether s0 was given or not)
};

// entering: ssd_forward's; workspace: ssd_entering_bytes(a) (the state adjoint leaving every chunk,
// bf16), 16-byte aligned. Recomputes nothing but the in-chunk scores from the inputs.
cudaError_t ssd_backward(const SsdArgs& a, const void* entering, const SsdGrads& g, void* workspace,
                         cudaStream_t stream);

}  // namespace cuda
}  // namespace mamba2
}  // namespace linearnexus
