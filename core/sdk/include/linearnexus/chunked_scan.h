#pragma once
// The math of the linear-time blocks, once: a chunked (training / prefill) form and a recurrent
// (decoding, and the tests' reference) form of three families of linear recurrences over a matrix
// state S [B, H, K, V] per head. Block plugins (gla, mamba2, deltanet, gated_deltanet, kda, rwkv7)
// map their projections onto these and keep only their own wiring.
//
//   decay family   S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t                 o_t = q_t S_t
//                  g [B, H, T, K] (a decay per key channel: GLA) or [B, H, T, 1] (one per head:
//                  Mamba-2 / SSD, where the intra-chunk part becomes a plain matmul)
//   delta rule     S_t = exp(g_t) (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t^T v_t   o_t = q_t S_t
//                  beta [B, H, T] in [0, 1], g [B, H, T] (gated DeltaNet) or undefined (DeltaNet)
//   generalised    S_t = diag(exp(g_t)) S_{t-1} + b_t^T (a_t S_{t-1}) + k_t^T v_t   o_t = q_t S_t
//   delta rule     g, a, b [B, H, T, K]: a decay per key channel plus a rank-one "read along a,
//                  write along b" correction (RWKV-7: a = -kappa, b = kappa * iclr; Kimi Delta
//                  Attention: a = exp(g) k, b = -beta k, k <- beta k)
//
// q, k [B, H, T, K]; v [B, H, T, V]; g are log-decays (<= 0). Both forms take the state entering
// the sequence in S (undefined = zeros) and leave the state after the last token there. They
// compute in fp32 whatever the inputs' dtype (a state summed over thousands of steps would lose
// too much in bf16) and return o [B, H, T, V] in q's dtype. Everything is differentiable with
// autograd, S included.
//
// A token with k = 0 and g = 0 (decay family), beta = 0 and g = 0 (delta rule), or k = b = 0 and
// g = 0 (generalised delta rule) leaves the state unchanged: that is how blocks make left padding "as if absent".
#include <ATen/ATen.h>

#include <limits>
#include <string>

#include "linearnexus/params.h"

namespace linearnexus {

// The schema entries of a block whose training / prefill form is one of these chunked scans, in one
// wording: chunk_size (the block's default and upper bound; `note` appended to the doc: what the chunk
// costs in this block) and scan (chunk, or the recurrent form the tests take as the reference).
ParamSpec chunk_size_spec(const std::string& default_size, double max_size, const std::string& note = "");
ParamSpec scan_spec();

// Chunks of `chunk` tokens (any T: the last chunk is padded with such no-op tokens). Inside a chunk
// the pairwise form, between chunks the state; only exp of non-positive numbers is ever formed, so
// strong decays over long sequences stay finite. All three chunked forms find the states entering the
// chunks from S_{i+1} = M_i S_i + R_i: on CUDA and past 32 chunks by a scan over chunks (log2 N
// rounds of batched matmuls), else by a loop (chunked_scan.cpp says why).
at::Tensor decay_scan_chunked(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& g,
                              at::Tensor& S, int64_t chunk);
// One token after the other.
at::Tensor decay_scan_recurrent(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& g,
                                at::Tensor& S);

// The chunked WY / UT-transform form (Yang et al. 2024): inside a chunk the T sequential rank-one
// updates become one unit-lower-triangular solve, then two matmuls against the entering state.
at::Tensor delta_scan_chunked(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& beta,
                              const at::Tensor& g, at::Tensor& S, int64_t chunk);
at::Tensor delta_scan_recurrent(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& beta,
                                const at::Tensor& g, at::Tensor& S);

// The generalised delta rule chunked: inside a chunk the reads e_i = a_i S_{i-1} solve one
// unit-lower-triangular system (as the UT transform), the rest is matmuls against the entering
// state. In general the per-channel decay does not factor out of the pairwise products (as for GLA)
// and they are formed as [n, n, K]: keep chunks small (16). A caller whose log-decays are bounded,
// g >= min_log_decay (RWKV-7: -e^-0.5), with chunk * -min_log_decay <= 30, gets plain matmuls.
at::Tensor gdelta_scan_chunked(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& a,
                               const at::Tensor& b, const at::Tensor& g, at::Tensor& S, int64_t chunk,
                               double min_log_decay = -std::numeric_limits<double>::infinity());
at::Tensor gdelta_scan_recurrent(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& a,
                                 const at::Tensor& b, const at::Tensor& g, at::Tensor& S);

}  // namespace linearnexus
