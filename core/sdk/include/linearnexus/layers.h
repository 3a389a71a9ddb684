#pragma once
// Building blocks shared by block plugins: RMSNorm, the MLP, the pre-norm residual MLP tail,
// rotary embeddings, causal depthwise convolution and the standard initialisation. One
// implementation each, here.
#include <torch/nn.h>

#include <map>
#include <string>
#include <utility>

#include "linearnexus/model.h"
#include "linearnexus/param_role.h"

namespace linearnexus {

class RMSNorm : public torch::nn::Module {
 public:
  explicit RMSNorm(int64_t dim, double eps = 1e-5);
  // x: [..., C] -> [..., C]
  at::Tensor forward(const at::Tensor& x);
  // {x, forward(x)} for a pre-norm whose input also flows on in the residual stream (out = x + ...):
  // use .first where x is used again. The same values; on CUDA with autograd on, the gradient the
  // stream brings to x is added into the norm's backward kernel (no separate pass over the stream).
  std::pair<at::Tensor, at::Tensor> forward_residual(const at::Tensor& x);
  at::Tensor weight;
  double eps;
};

// The model's norm (model.norm, model.norm_eps), for the final norm and every block's pre-norms:
// RMSNorm, or LayerNorm (GPT-2) which adds a "bias" beside RMSNorm's "weight". Normalises in fp32.
class Norm : public RMSNorm {
 public:
  Norm(int64_t dim, const ModelDims& dims);
  // x: [..., C] -> [..., C]
  at::Tensor forward(const at::Tensor& x);
  // RMSNorm::forward_residual, or {x, forward(x)} for LayerNorm.
  std::pair<at::Tensor, at::Tensor> forward_residual(const at::Tensor& x);
  at::Tensor bias;  // LayerNorm only
};

// A Linear's forward, layer(x), plus residual when given (x [..., in] -> [..., out]; residual
// [..., out]). Blocks call their projections through it: on CUDA, for decoding (at most 16 rows, no
// gradient wanted, a bf16 weight such as the generator's replica holds, bf16 x or bf16 autocast) it
// is one skinny-matmul kernel with the bias and the residual add in its epilogue
// (cuda/skinny_gemm.cu); everywhere else, and with LINEARNEXUS_UNFUSED=1, layer(x) (+ residual) as
// ops. The second form takes a bare weight [out, in] and bias [out] (undefined: none).
at::Tensor linear_forward(const torch::nn::Linear& layer, const at::Tensor& x, const at::Tensor& residual = {});
at::Tensor linear_forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias = {},
                          const at::Tensor& residual = {});

// LINEARNEXUS_DECODE_FUSION=1: decoding on CUDA fuses each norm into the matmul after it (ln1 -> qkv,
// ln2 -> the MLP's up / gate, the final norm -> the LM head: norm_linear_forward) and the attention
// block's residual add into its out-projection. Off by default: verified in the CPU emulator
// (core/sdk/src/cuda/emu), not yet run on a GPU. Read at every call (a getenv), so a captured step
// keeps what it was captured with.
bool decode_fusion_enabled();

// {x as the residual stream carries it on, linear_forward(norm(x), weight, bias)}: x [..., C] ->
// [..., C], [..., out]. What norm.forward_residual then linear_forward give; on CUDA with
// LINEARNEXUS_DECODE_FUSION=1, gradients off and the skinny matmul's conditions (decoding: <= 16 rows,
// a bf16 weight) one kernel that normalises the rows in its prologue (cuda/skinny_gemm.cu), x itself
// first. Everywhere else, and with LINEARNEXUS_UNFUSED=1, the ops as before.
std::pair<at::Tensor, at::Tensor> norm_linear_forward(Norm& norm, const at::Tensor& x, const at::Tensor& weight,
                                                      const at::Tensor& bias = {});
// The fused kernel alone: act(norm(x) W^T + bias) (act gelu_tanh when `gelu`) where
// norm_linear_forward would run it, else undefined (the caller runs its own ops). Under bf16 autocast
// x may be the fp32 residual stream; the output is bf16.
at::Tensor norm_linear_fused(const Norm& norm, const at::Tensor& x, const at::Tensor& weight,
                             const at::Tensor& bias = {}, bool gelu = false);

// The greedy head (issue #30 item 3): {token [R] int64, log-prob [R] fp32} of argmax_v logits for x
// [R, C] (the last block's output, before the final norm), logits = norm(x) weight[:V]^T in bf16, as
// one kernel that never writes the [R, V] logits: under LINEARNEXUS_DECODE_FUSION=1 where
// norm_linear_fused applies; else {} (undefined: the caller runs the logits and its sampler).
// workspace: greedy_head_workspace(V, device), made outside CUDA-graph capture and kept by the caller.
std::pair<at::Tensor, at::Tensor> norm_greedy_head(const Norm& norm, const at::Tensor& x, const at::Tensor& weight,
                                                   int64_t V, const at::Tensor& workspace);
at::Tensor greedy_head_workspace(int64_t V, const at::Device& device);  // undefined off CUDA

// "swiglu": down(silu(gate(x)) * up(x)) with hidden = 8/3 C rounded to a multiple of 64;
// "gelu": down(gelu_tanh(up(x))) with hidden = 4 C. hidden > 0 overrides the width; `bias` adds
// biases to every projection (GPT-2's MLP).
class MLP : public torch::nn::Module {
 public:
  MLP(int64_t dim, const std::string& kind, int64_t hidden, int64_t n_layer, bool bias = false);
  // x: [B, T, C] -> [B, T, C]
  at::Tensor forward(const at::Tensor& x);
  // residual + forward(x) (residual [B, T, C]); in decoding the add is down's epilogue.
  at::Tensor forward_add(const at::Tensor& x, const at::Tensor& residual);
  std::string kind;
  torch::nn::Linear up{nullptr}, gate{nullptr}, down{nullptr};
};

// The tail every transformer-style block shares, after its token mixer produced y:
//   h = x + dropout(y);  out = h + mlp(ln2(h))                     x, y, out: [B, T, C]
// It registers "ln2" (the model's Norm) and "mlp" (MLP) on the block that owns it, so the parameter
// and checkpoint names stay the block's own ("ln2.weight", "mlp.up.weight"...). Construct it in the
// block's constructor where ln2 and mlp were registered before (the order of the random init).
// The schema entries of the MLP tail a block builds with ResidualMLP, in one wording for every block:
// mlp (swiglu | gelu; `kind_note` appended to its doc) and mlp_hidden.
Schema mlp_schema(const std::string& kind_note = "");

class ResidualMLP {
 public:
  ResidualMLP() = default;  // empty until assigned one built on its block
  ResidualMLP(torch::nn::Module& block, const ModelDims& dims, const std::string& mlp_kind, int64_t mlp_hidden,
              bool mlp_bias = false);
  at::Tensor forward(const at::Tensor& x, const at::Tensor& y, bool training) const;
  // h + mlp(ln2(h)) for a block that added its mixer's output to the stream itself (h = x + y; the
  // attention block in decoding: the add in its out-projection's epilogue). No dropout: inference
  // only. With decode fusion ln2 is the up (and gate) projection's prologue.
  at::Tensor forward_sum(const at::Tensor& h) const;
  // Whether forward_sum of a stream h shaped like x runs ln2 inside the up projection's kernel (decode
  // fusion on, gradients off, the skinny matmul's conditions): where it does not, forward's fused add
  // and norm are as cheap, so a block keeps forward.
  bool forward_sum_fused(const at::Tensor& x) const;
  // {"ln2.*": Norm, "mlp.*": Matrix (its biases: Bias)}, for the block's parameter_roles().
  std::map<std::string, ParamRole> parameter_roles() const;

 private:
  std::shared_ptr<Norm> ln2_;
  std::shared_ptr<MLP> mlp_;
  double dropout_ = 0.0;
};

// GPT-2 style init: N(0, 0.02) weights, zero biases; residual output projections get
// std 0.02 / sqrt(2 n_layer) so the residual stream's variance does not grow with depth.
void init_linear(torch::nn::Linear& layer, double std = 0.02);
void init_residual_projection(torch::nn::Linear& layer, int64_t n_layer);

// Rotary position embedding on the first `rot_dim` features (all when 0) of x [B, H, T, D],
// at absolute positions [B, T] or [1, T] (int64). Pairs are (i, i + D/2) halves ("neox" layout).
at::Tensor apply_rope(const at::Tensor& x, const at::Tensor& positions, double base = 10000.0);
// The same rotation as a matrix for one token per row: apply_rope(x) == x @ R for x [B, ..., D] at
// positions [B, 1], R = rope_matrix(positions, D, base, dtype) [B, D, D]. Static decoding makes R
// once per step (ForwardContext::memo) and rotates each layer's queries and keys in one matmul
// instead of the elementwise rotation's dozen small kernels.
at::Tensor rope_matrix(const at::Tensor& positions, int64_t D, double base, at::ScalarType dtype);

// Attention's q [B, H, T, D], k and v [B, Hkv, T, D] from a fused projection qkv [B, T, (H + 2 Hkv) D]
// (q's heads, then k's, then v's), with apply_rope on q and k at positions [B or 1, T] when `rope`.
// On CUDA one fused kernel (and one for backward) that also lays q, k, v out as [B, heads, T, D]
// views of contiguous token-major [B, T, heads, D] tensors (attention then writes its output in that
// layout, and [B, T, C] is a view of it); elsewhere views of qkv and apply_rope.
struct HeadSplit {
  at::Tensor q, k, v;
};
HeadSplit split_heads(const at::Tensor& qkv, const at::Tensor& positions, int64_t H, int64_t Hkv, int64_t D, bool rope,
                      double base = 10000.0);

// Causal depthwise conv over time. x [B, T, C], weight [C, K], bias [C] or undefined.
// `history` [B, C, K-1] holds the K-1 inputs before x (zeros at the start); returns y [B, T, C]
// and, through new_history, the last K-1 inputs (for decoding).
at::Tensor causal_depthwise_conv1d(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                   const at::Tensor& history, at::Tensor* new_history);

}  // namespace linearnexus
