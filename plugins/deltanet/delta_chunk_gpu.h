// The delta-rule chunk kernels on CUDA (delta_chunk.cu, delta_chunk_bwd.cu): the torch side (checks,
// layouts, dtypes, autograd) in delta_chunk_gpu.cpp; cuda_stubs.cpp where LibTorch has no CUDA.
// STATUS: the kernels are verified in the CPU emulator (emu/run.sh) only; never run on a GPU.
// test_delta_chunk_gpu.cpp checks them against delta_scan_chunked and delta_scan_recurrent.
#pragma once

#include <ATen/ATen.h>

namespace linearnexus {
namespace deltanet {

// Whether this build has the kernels and they take q (on CUDA, fp32 or bf16) and head_dim (64 or 128).
bool delta_cuda_applies(const at::Tensor& q, int64_t head_dim);

struct DeltaResult {
  at::Tensor o, state;
};

// delta_scan_chunked's math (chunked_scan.h) per batch row and head, S [D, D] fp32 (s0 before the
// first token):
//   S_t = exp(g_t) (I - beta_t k_t^T k_t) S_{t-1} + beta_t k_t^T v_t,   o_t = q_t S_t
// q, k, v [B, H, T, D] fp32 or bf16 (k, v cast to q's dtype; a [B, T, H, D] tensor transposed, as
// the block's heads are, is taken without a copy); beta [B, H, T]; g [B, H, T] log-decays <= 0 or
// undefined (no decay); s0 [B, H, D, D] or undefined (zeros) -> o [B, H, T, D] in q's dtype (a
// transposed view of a [B, T, H, D] tensor) and the state after the last token [B, H, D, D] fp32.
// The matmuls take bf16 operands whatever q's dtype (fp32 accumulation, fp32 state): expect
// bf16-level agreement with the tensor-op path. Chunks of 64 tokens whatever the block's
// chunk_size. Differentiable in q, k, v, beta, g and s0.
DeltaResult delta_chunk_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& beta,
                             const at::Tensor& g, const at::Tensor& s0);

}  // namespace deltanet
}  // namespace linearnexus
