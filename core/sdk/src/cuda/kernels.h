// Launchers of core's CUDA kernels (one .cu per idea beside this header). No torch types: raw
// device pointers, sizes and a stream, so each .cu compiles with nvcc alone; the ATen glue
// (autograd, dtypes, checks) is in the .cpp that uses them. Compiled only when LibTorch has CUDA.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace linearnexus {
namespace cuda {

enum class DType { F32, BF16 };

// cross_entropy.cu: the loss half of the fused LM head + cross-entropy (loss.cpp). For each of
// `rows` rows of logits [rows, row_stride] (the first V columns are real, the rest padding) and its
// target (-1 = no loss): loss[r] = logsumexp(x_r[:V]) - x_r[target] (0 for target -1), and, when
// write_grad, the row is overwritten in place by its gradient softmax(x_r) - onehot(target) (zero
// in the padding columns and on rows without loss). row_stride must be a multiple of 8.
cudaError_t softmax_cross_entropy_rows(void* logits, DType dtype, int64_t rows, int64_t V, int64_t row_stride,
                                       const int64_t* targets, float* loss, bool write_grad, cudaStream_t stream);

// rope.cu: the split of a fused qkv projection into attention's q, k, v with rotary embeddings on q
// and k (neox halves: pairs (i, i + D/2), angle pos * base^(-2i/D), computed in fp32 as apply_rope
// does).
// Forward (inverse false): qkv [B, T, (H + 2 Hkv) D] -> q [B, T, H, D], k, v [B, T, Hkv, D], each
// contiguous (token-major). Backward (inverse true): the same index map the other way with the
// rotation inverted: dq, dk, dv (contiguous, same layout) -> dqkv.
// positions: [B or 1, T] int64 (pos_batch_stride 0 for one row).
struct QkvRopeArgs {
  int64_t B = 0, T = 0, H = 0, Hkv = 0, D = 0;
  const int64_t* positions = nullptr;
  int64_t pos_batch_stride = 0;
  float base = 10000.f, two_over_d = 0;  // inv_freq_i = base^(-i * two_over_d), two_over_d = 2/D in fp32
  bool rope = true;                      // false: the split alone
};
cudaError_t qkv_rope(const QkvRopeArgs& a, DType dtype, void* qkv, void* q, void* k, void* v, bool inverse,
                     cudaStream_t stream);

// rms_norm.cu: y = x * rstd * w with rstd = 1 / sqrt(mean(x^2) + eps) over rows of C, x fp32 or
// bf16, y fp32 or bf16 (the compute dtype, so the next matmul needs no cast), w fp32; rstd [rows]
// kept for backward. Backward: dx (x's dtype) = rstd (g - xhat mean(g xhat)) with g = dy w,
// xhat = x rstd; dw_partial [blocks, C] fp32, one row of partial sums per block (summed by the caller:
// deterministic, unlike atomics). rms_norm_backward_blocks(rows) says how many.
cudaError_t rms_norm_forward(const void* x, DType x_dtype, const float* w, void* y, DType y_dtype, float* rstd,
                             int64_t rows, int64_t C, float eps, cudaStream_t stream);
int64_t rms_norm_backward_blocks(int64_t rows);
cudaError_t rms_norm_backward(const void* dy, DType y_dtype, const void* x, DType x_dtype, const float* w,
                              const float* rstd, void* dx, float* dw_partial, int64_t rows, int64_t C,
                              cudaStream_t stream);

// residual_rms_norm.cu: a block's residual add and the RMSNorm after it, h = x + y and
// n = rms_norm(h) * w (rms_norm.cu's math), over rows of C. x and h in x's dtype (the residual
// stream, fp32 under autocast), y in its own (a projection's output, bf16 under autocast), n in the
// compute dtype; rstd [rows] kept for backward. Backward: dh (the gradient the residual stream
// brings past h, h's dtype; null = zero) and dn (n's dtype) -> dx = dh + the norm's dx, written in
// x's dtype to dx and in y's to dy (the add passes it to both; dy null: not written); dw_partial as
// rms_norm_backward's. With dy null and h = x it is also a plain RMSNorm's backward that adds the
// residual stream's gradient of its input (RMSNorm::forward_residual).
cudaError_t residual_rms_norm_forward(const void* x, DType x_dtype, const void* y, DType y_dtype, const float* w,
                                      void* h, void* n, DType n_dtype, float* rstd, int64_t rows, int64_t C, float eps,
                                      cudaStream_t stream);
cudaError_t residual_rms_norm_backward(const void* dh, const void* dn, DType n_dtype, const void* h, DType x_dtype,
                                       const float* w, const float* rstd, void* dx, void* dy, DType y_dtype,
                                       float* dw_partial, int64_t rows, int64_t C, cudaStream_t stream);

// residual_add.cu: out = a + b over n values, a and out in a's dtype (the residual stream), b in a's
// or bf16 (fp32 + bf16, fp32 + fp32, bf16 + bf16).
cudaError_t residual_add(const void* a, DType a_dtype, const void* b, DType b_dtype, void* out, int64_t n,
                         cudaStream_t stream);

// swiglu.cu: out = silu(gate) * up elementwise over n values (fp32 or bf16, one dtype), and its
// backward dgate, dup from dout in one pass (sigmoid recomputed from gate, nothing else saved).
cudaError_t swiglu_forward(const void* gate, const void* up, void* out, DType dtype, int64_t n, cudaStream_t stream);
cudaError_t swiglu_backward(const void* gate, const void* up, const void* dout, void* dgate, void* dup, DType dtype,
                            int64_t n, cudaStream_t stream);

// skinny_gemm.cu: the decode step's Linear for M = 1..16 rows,
//   y[M, N] = act(x[M, K] W[N, K]^T (+ bias[N])) (+ residual[M, N]),   act: identity or gelu_tanh,
// x and W bf16 (W row-major as nn.Linear keeps it), fp32 accumulation; bias and residual fp32 or bf16,
// y fp32 or bf16 (rows N apart, as residual's). Streams W once at close to DRAM bandwidth (tensor
// cores on swapped operands, K split over warps and, on Hopper, over a cluster's CTAs). Needs
// K % 8 == 0, ldx % 8 == 0 and 16-byte aligned x and W (skinny_gemm_supported; else
// cudaErrorInvalidValue: callers fall back to a GEMM). pdl: launch with programmatic stream
// serialization (the weights' first loads overlap the previous kernel's end).
// With norm_w set, the norm prologue: x holds the rows before a norm (x_dtype fp32 or bf16, rows ldx
// apart, no alignment needed) and the matmul's input is norm(x) rounded to bf16, computed in every
// CTA: RMSNorm x rstd w (rms_norm.cu's arithmetic), or with layer_norm (x - mean) rstd w + norm_b
// (null: none), rstd = 1 / sqrt(mean of squares (of x - mean) + eps), w and b in norm_dtype.
// skinny_norm_gemm_supported says where (its shared memory holds the CTA's share of the rows: K up
// to ~1400 at 16 rows, ~2900 at 8 with the launcher's configuration).
struct SkinnyGemmConfig {
  int tiles = 0;    // 16-feature tiles a CTA (1, 2 or 4); 0 = the launcher's choice for the shape
  int warps = 0;    // warps a CTA (1..8), splitting K
  int splits = 0;   // CTAs of a cluster splitting K (1..8; > 1 on sm_90+ only)
  int64_t kpw = 0;  // 32-wide k blocks a warp
};
SkinnyGemmConfig skinny_gemm_config(int64_t M, int64_t N, int64_t K);  // for the current device
bool skinny_gemm_supported(int64_t M, int64_t K, int64_t ldx, const void* x, const void* w);
bool skinny_norm_gemm_supported(int64_t M, int64_t N, int64_t K, int64_t ldx, const void* w);
struct SkinnyGemmArgs {
  const void* x = nullptr;         // [M, ldx] bf16 (norm: x_dtype)
  const void* w = nullptr;         // [N, K] bf16, contiguous
  const void* bias = nullptr;      // [N] or null
  const void* residual = nullptr;  // [M, N] contiguous, or null
  void* y = nullptr;               // [M, N] contiguous
  DType bias_dtype = DType::F32, residual_dtype = DType::F32, y_dtype = DType::BF16;
  int64_t M = 0, N = 0, K = 0, ldx = 0;
  SkinnyGemmConfig config;  // tiles 0: skinny_gemm_config's
  bool gelu = false;        // act = gelu_tanh
  bool pdl = false;
  const void* norm_w = nullptr;  // [K]: the norm prologue's weight; null: none
  const void* norm_b = nullptr;  // [K]: LayerNorm's bias, or null
  DType x_dtype = DType::BF16, norm_dtype = DType::F32;
  bool layer_norm = false;
  float norm_eps = 1e-5f;
  // The greedy head (token set; needs the norm prologue, no residual, no GELU; no cluster split): y is
  // not written; token[m] = argmax_n y[m, n] (the first on ties) and logp[m] its log-softmax, from y
  // rounded to bf16 (the logits the plain path reads). workspace: skinny_greedy_workspace_bytes(N)
  // bytes, zero before its first launch (each launch leaves it so; one launch at a time).
  int64_t* token = nullptr;
  float* logp = nullptr;
  void* workspace = nullptr;
};
size_t skinny_greedy_workspace_bytes(int64_t N);
cudaError_t skinny_gemm(const SkinnyGemmArgs& a, cudaStream_t stream);

}  // namespace cuda
}  // namespace linearnexus
