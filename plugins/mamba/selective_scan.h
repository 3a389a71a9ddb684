// The selective scan of the mamba block, s_t = exp(delta_t A) s_{t-1} + delta_t B_t u_t, y_t = C_t s_t,
// in the forms the block picks from (the `scan` parameter):
//   chunk       the training / prefill path on any device: chunks of chunk_size tokens, each batched
//               ops on [B, chunk, N, D] with cumulative log-decays, the state carried across chunks,
//               and a hand-written backward that recomputes one chunk at a time;
//   fused       the training / prefill path for fp32 on the CPU (scan: auto): one pass over time per
//               block of 16 channels with the states in cache, parallel over batch x channel blocks,
//               the same chunk-at-a-time recomputation in backward; ~10x faster than `chunk` there;
//   sequential  a plain loop over time steps, the reference the tests compare against.
// The CUDA kernel (scan: auto on a GPU) is in selective_scan_gpu.h: it also fuses the gate.
#pragma once

#include <ATen/ATen.h>

namespace linearnexus {
namespace mamba {

// Shapes: u, delta [B, T, D] (D = d_inner); A [D, N] (negative); Bm, Cm [B, T, N]; s0 [B, D, N].
// Each scan returns y [B, T, D] without the D-skip, and the state after the last token [B, D, N].
struct ScanResult {
  at::Tensor y, state;
};

ScanResult scan_chunk(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& Bm,
                      const at::Tensor& Cm, const at::Tensor& s0, int64_t chunk_size);

// The fused CPU kernel where it applies (fp32 on the CPU); otherwise scan_chunk.
ScanResult scan_fused(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& Bm,
                      const at::Tensor& Cm, const at::Tensor& s0, int64_t chunk_size);

// The reference: T steps of small ops, autograd through every one (tests and benchmarks).
ScanResult scan_sequential(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& Bm,
                           const at::Tensor& Cm, const at::Tensor& s0);

}  // namespace mamba
}  // namespace linearnexus
