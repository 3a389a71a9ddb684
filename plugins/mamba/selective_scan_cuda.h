// The CUDA selective-scan kernels' launchers (implemented in selective_scan.cu). No torch types:
// raw device pointers, sizes and a stream, so the .cu compiles with nvcc alone; the torch glue
// (autograd, checks, dispatch) is selective_scan_gpu.cpp.
//
// One call computes, per batch row b, channel d and time t (D = d_inner, N = d_state):
//   delta = softplus(dt + bias[d])          (or dt itself when `softplus` is off)
//   s_t   = exp(delta A[d]) s_{t-1} + delta u B_t          s: [N] per channel, fp32
//   out   = (C_t . s_t + Dskip[d] u) * silu(z)             (without the gate when z is null)
// Inputs are fp32 or bf16 (one dtype for u, dt, z, B, C, out and the gradients of u, dt, z); the
// states and every sum are fp32.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace linearnexus {
namespace mamba {
namespace cuda {

enum class DType { F32, BF16 };

// Tokens between the states that the forward keeps for backward ([B, ceil(T / kKeepEvery), D, N]).
constexpr int64_t kKeepEvery = 64;
// The largest d_state the kernels take.
constexpr int64_t kMaxState = 64;

struct ScanArgs {
  int64_t B = 0, T = 0, D = 0, N = 0;
  DType dtype = DType::F32;
  // [B, T, D] and [B, T, N] operands: element (b, t, i) at ptr[(b * T + t) * row + i].
  const void* u = nullptr;
  int64_t u_row = 0;
  const void* dt = nullptr;
  int64_t dt_row = 0;
  const float* dt_bias = nullptr;  // [D] or null
  bool softplus = false;
  const float* A = nullptr;  // [D, N], negative
  const void* Bm = nullptr;
  int64_t B_row = 0;
  const void* Cm = nullptr;
  int64_t C_row = 0;
  const float* Dskip = nullptr;  // [D] or null
  const void* z = nullptr;       // [B, T, D] or null (no gate)
  int64_t z_row = 0;
  const float* s0 = nullptr;  // [B, D, N] or null (a zero state)
};

inline int64_t kept_chunks(int64_t T) { return (T + kKeepEvery - 1) / kKeepEvery; }

// out [B, T, D] contiguous (the input dtype); sT [B, D, N] the state after the last token;
// kept [B, kept_chunks(T), D, N] the state entering every kKeepEvery-token chunk, or null (no backward).
cudaError_t scan_forward(const ScanArgs& a, void* out, float* sT, float* kept, cudaStream_t stream);

struct ScanGrads {
  const void* dout = nullptr;  // [B, T, D]
  int64_t dout_row = 0;
  const float* dsT = nullptr;  // [B, D, N] or null
  void* du = nullptr;          // [B, T, D] contiguous, input dtype
  void* ddt = nullptr;         // [B, T, D] contiguous: the gradient of dt (before the softplus)
  void* dz = nullptr;          // [B, T, D], rows dz_row apart, when z is given
  int64_t dz_row = 0;
  float* dA = nullptr;      // [B, D, N]: one partial sum per batch row
  float* dDskip = nullptr;  // [B, D] partial sums, or null
  float* dbias = nullptr;   // [B, D] partial sums, or null
  float* dB = nullptr;      // [B, T, N], zeros on entry: the kernel adds into it (atomics)
  float* dC = nullptr;      // [B, T, N], zeros on entry
  float* ds0 = nullptr;     // [B, D, N], or null (no initial state to differentiate)
};

// Recomputes the states from `kept` (scan_forward's) one chunk at a time, parallel over the chunk's
// tokens, and writes every gradient (selective_scan_bwd.cu).
cudaError_t scan_backward(const ScanArgs& a, const float* kept, const ScanGrads& g, cudaStream_t stream);

// One decoded token of the causal depthwise conv + silu (conv_step.cu), the state updated in place:
//   u[b, d] = silu(sum_k window[k] weight[d, k] + bias[d]),  window = [state[b, d, :], x[b, d]],
//   state[b, d, :] = window[1:]
struct ConvStepArgs {
  int64_t B = 0, D = 0;
  int K = 0;                 // taps (d_conv)
  DType dtype = DType::F32;  // of x, u and the state
  const void* x = nullptr;   // [B, D], rows x_row apart
  int64_t x_row = 0;
  void* state = nullptr;          // [B, D, K - 1] contiguous
  const float* weight = nullptr;  // [D, K]
  const float* bias = nullptr;    // [D] or null
};
// u: [B, D] contiguous.
cudaError_t conv_step(const ConvStepArgs& a, void* u, cudaStream_t stream);

}  // namespace cuda
}  // namespace mamba
}  // namespace linearnexus
