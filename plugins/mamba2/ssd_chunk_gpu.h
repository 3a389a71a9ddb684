// The Mamba-2 (SSD) chunk kernels on CUDA (ssd_chunk.cu, ssd_chunk_bwd.cu): the torch side (checks,
// layouts, dtypes, autograd) in ssd_chunk_gpu.cpp; cuda_stubs.cpp where LibTorch has no CUDA.
// STATUS: the kernels are verified in the CPU emulator (emu/run.sh) only; never run on a GPU.
// test_ssd_chunk_gpu.cpp checks them against decay_scan_chunked.
#pragma once

#include <ATen/ATen.h>

namespace linearnexus {
namespace mamba2 {

// Whether this build has the kernels and they take x (on CUDA, fp32 or bf16), d_state and head_dim
// (d_state 64 or 128, head_dim 32, 64, 96 or 128).
bool ssd_cuda_applies(const at::Tensor& x, int64_t d_state, int64_t head_dim);

struct SsdResult {
  at::Tensor y, state;
};

// Per batch row and head h of group h / (H / G), with S [N, P] fp32 (S = s0 before the first token):
//   S_t = exp(g_t) S_{t-1} + (dt_t B_t)^T x_t,   y_t = C_t S_t
// x [B, T, H, P] fp32 or bf16 (rows may be strided, as narrow()s of a wider projection are); Bm, Cm
// [B, T, G, N] (cast to x's dtype); dt [B, T, H] or undefined (1); g [B, T, H] log-decays <= 0; s0
// [B, H, N, P] or undefined (zeros) -> y [B, T, H, P] in x's dtype and the state after the last token
// [B, H, N, P] fp32. The matmuls take bf16 operands whatever x's dtype (fp32 accumulation, fp32 state):
// expect bf16-level agreement with the fp32 tensor-op path. Differentiable in x, Bm, Cm, dt, g, s0.
SsdResult ssd_chunk_cuda(const at::Tensor& x, const at::Tensor& dt, const at::Tensor& Bm, const at::Tensor& Cm,
                         const at::Tensor& g, const at::Tensor& s0);

}  // namespace mamba2
}  // namespace linearnexus
