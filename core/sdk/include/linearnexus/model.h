#pragma once
// The block protocol and the language model built from blocks.
//
// Every block, whatever its kind, is a pre-norm residual block [B,T,C] -> [B,T,C] with:
//   forward(x, state, ctx) -> {y, new_state}
//   init_state(batch, max_len, options)
// A LayerState is a bag of batch-first tensors the block owns (a KV cache, a conv + SSM state, a
// latent cache...). Blocks may write into preallocated state tensors in place and return them.
#include <torch/nn.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "linearnexus/lora.h"
#include "linearnexus/param_role.h"
#include "linearnexus/params.h"

namespace linearnexus {

class Registry;
class Norm;

enum class Mode {
  Train,    // whole sequences, no cache kept (state may be empty); the parallel path
  Prefill,  // whole prompt, fills the state so decoding can continue from it
  Decode,   // a few new tokens (usually one) appended to the state; the recurrent path
};

struct LayerState {
  std::map<std::string, at::Tensor> tensors;  // every tensor is batch-first: [B, ...]
  bool empty() const { return tensors.empty(); }
  int64_t bytes() const;
  // Keep / repeat rows (batched generation, groups of samples per prompt).
  LayerState index_select(const at::Tensor& rows) const;
  // Copy into this state's tensors, in place, those of `got` that are not the same tensors (a block
  // returned a new one in place of its own): static decoding's caches stay where a captured step
  // left them.
  void keep_in_place(const LayerState& got);
};

struct ForwardContext {
  Mode mode = Mode::Train;
  int64_t start = 0;       // tokens already held in the state (same for every row)
  at::Tensor positions;    // [B,T] int64 absolute positions; undefined = start + arange(T)
  at::Tensor key_padding;  // [B, start+T] bool, true = real token; undefined = no padding
  // Static decoding (decode_engine.h; only for blocks whose graph_safe_decode() is true): one new
  // token per row, written at cache column `slot`, a [1] int64 tensor on the device that holds what
  // `start` holds, so the step can be captured once in a CUDA graph and replayed at every position.
  // Then `start` is stale (never read it), positions is [B, 1], key_padding is [B, max_len] (the
  // columns after the new token are not filled yet) and the new token is never padding.
  // Undefined otherwise.
  at::Tensor slot;
  // Positions as [B,T] (or [1,T]) on `device`.
  at::Tensor position_ids(int64_t batch, int64_t T, const at::Device& device) const;
  // Which keys each query may attend to, for attention-like blocks: [B or 1, 1, T, Tk] bool (true =
  // visible) for T queries at absolute positions Tk-T .. Tk-1 over keys 0 .. Tk-1, honouring
  // key_padding. Undefined when no mask is needed: one query over the whole cache with no padding,
  // or (unless `always`) the plain causal case Tk == T that attention kernels do with is_causal.
  // A query always sees itself, so a padding query never has an empty row (no NaN).
  // In static decoding: [B, 1, 1, Tk], key j visible when j <= slot and it is not padding (made once
  // per step and shared by the layers).
  at::Tensor visibility_mask(int64_t T, int64_t Tk, const at::Device& device, bool always = false) const;
  // Write x's T new entries into `cache` along `dim` at columns [start, start + T) (static decoding:
  // at `slot`, in place, so a captured step writes where the replayed position says) and return what
  // attention reads: columns [0, start + T), or the whole cache in static decoding, where
  // visibility_mask hides the columns not written yet.
  at::Tensor append_to_cache(const at::Tensor& cache, const at::Tensor& x, int64_t dim) const;
  // The new tokens' keep mask [B, T, 1] in `dtype` (1 = real token, 0 = left padding) for recurrent
  // blocks, whose padding tokens must leave the state untouched; undefined when every new token is
  // real (no padding, or static decoding).
  at::Tensor new_token_keep(int64_t T, const at::Device& device, at::ScalarType dtype) const;
  // A tensor that depends only on this call's context (a mask, RoPE tables...), made by `make` for
  // the first block that asks for `key` and shared by the others: one set of kernels per step
  // instead of one per layer.
  at::Tensor memo(const std::string& key, const std::function<at::Tensor()>& make) const;

 private:
  mutable std::map<std::string, at::Tensor> memo_;
};

struct BlockOutput {
  at::Tensor y;
  LayerState state;
};

// model.norm: the kind of the model's norms (every block's pre-norms and the final norm).
enum class NormKind { RMSNorm, LayerNorm };

struct ModelDims {
  int64_t hidden_size = 0;
  int64_t n_layer = 0;
  int64_t vocab_size = 0;
  int64_t max_seq_len = 0;
  double dropout = 0.0;
  NormKind norm = NormKind::RMSNorm;  // blocks build their pre-norms with layers.h's Norm(dim, dims)
  double norm_eps = 1e-5;
};

class Block : public torch::nn::Module {
 public:
  // x: [B, T, C] -> y: [B, T, C]
  virtual BlockOutput forward(const at::Tensor& x, LayerState state, const ForwardContext& ctx) = 0;
  // Empty cache for `batch` rows and up to `max_len` tokens.
  virtual LayerState init_state(int64_t batch, int64_t max_len, const at::TensorOptions& options) const = 0;
  // Fused weight matrices made of logical sub-matrices stacked along dim 0, as
  // {parameter name relative to the block: [rows of part 1, rows of part 2, ...]}. Muon
  // orthogonalises each part on its own.
  virtual std::map<std::string, std::vector<int64_t>> fused_splits() const { return {}; }
  // What each parameter is to the optimizers, as {parameter name relative to the block: role}
  // (param_role.h): Muon orthogonalises Matrix tensors only, weight decay skips embeddings, norms,
  // biases and SSM dynamics. A parameter left out gets default_role (>= 2-D: Matrix, else Other).
  virtual std::map<std::string, ParamRole> parameter_roles() const { return {}; }
  // True when the block's Decode path honours static decoding (ForwardContext::slot), so that the
  // whole model's one-token step can be captured in a CUDA graph and replayed: with ctx.slot
  // defined it reads positions from ctx.positions / ctx.slot (never ctx.start), writes caches with
  // ctx.append_to_cache (or in place at ctx.slot), masks with ctx.visibility_mask, and does nothing
  // that reads a device value on the host (.item(), nonzero, a shape taken from data) or depends
  // on the step. Allocating is fine; a state tensor it returns in place of its own is copied back.
  // A model with one block that says false decodes eagerly (one log line names the block).
  // docs/writing_plugins.md, "Graph-captured decoding".
  virtual bool graph_safe_decode() const { return false; }
};

struct ModelConfig {
  ModelDims dims;
  std::vector<std::string> block_pattern;      // repeated to fill n_layer
  std::map<std::string, Params> block_params;  // block name -> its validated parameters
  bool tie_embeddings = true;
  // model.positions: learned = absolute position embeddings (wpe, max_seq_len rows) added to the
  // token embeddings, as GPT-2; otherwise positions are the blocks' business (RoPE).
  bool learned_positions = false;
  LoraConfig lora;  // model.lora: adapters on the blocks' Linear layers (lora.h); rank 0 = none
  std::vector<std::string> layer_kinds() const;  // the pattern expanded to n_layer names
};

// All layers' states for one batch of sequences.
struct ModelState {
  std::vector<LayerState> layers;
  int64_t length = 0;  // tokens consumed so far
  int64_t max_len = 0;
  at::Tensor key_padding;  // [B, max_len] bool or undefined
  // Defined for static decoding (ForwardContext::slot): forward then takes one token, leaves
  // `length` alone and keeps every layer's state tensors where they are (copying back any a block
  // returned in place of its own), so the step can be captured and replayed.
  at::Tensor slot;
  int64_t bytes() const;
  ModelState index_select(const at::Tensor& rows) const;
  void keep_in_place(const ModelState& got);  // LayerState::keep_in_place, layer by layer
};

// token embedding (+ learned positions) -> blocks -> final norm (RMSNorm or LayerNorm) -> LM head
// (optionally tied to the embedding).

class LMModel : public torch::nn::Module {
 public:
  LMModel(const ModelConfig& config, const Registry& registry);

  // idx [B,T] int64 -> logits [B,T,V]. With a state: continues it (Prefill/Decode) and updates it.
  at::Tensor forward(const at::Tensor& idx, ModelState* state = nullptr, Mode mode = Mode::Train,
                     const at::Tensor& positions = {});
  // The final normalised hidden states [B,T,C] (for value heads); logits = lm_logits(h).
  at::Tensor forward_hidden(const at::Tensor& idx, ModelState* state = nullptr, Mode mode = Mode::Train,
                            const at::Tensor& positions = {});
  // forward_hidden without the final norm: the last block's output [B,T,C] (the residual stream), for
  // a caller that fuses the norm into the head's matmul (the decode engine under
  // LINEARNEXUS_DECODE_FUSION); forward_hidden = final_norm(forward_stream).
  at::Tensor forward_stream(const at::Tensor& idx, ModelState* state = nullptr, Mode mode = Mode::Train,
                            const at::Tensor& positions = {});
  // The final norm of x [B,T,C] as forward_hidden applies it (under the model's autocast), and the module.
  at::Tensor final_norm(const at::Tensor& x);
  Norm& final_norm_module() { return *norm_; }
  at::Tensor lm_logits(const at::Tensor& hidden);
  // The LM head's weight [V, C] in `dtype`; `padded`: with zero rows up to a multiple of 64, so the
  // logits' rows are 16-byte multiples for cuBLAS's fast kernels (take the first V columns).
  // Differentiable (the padding's gradient is dropped). lm_logits and the host's generator use it.
  at::Tensor head(at::ScalarType dtype, bool padded) const;
  // Mean next-token cross-entropy of idx [B,T] against targets [B,T] (-1 = no loss), in fp32: the
  // training path, through lm_head_loss (never materialising the [B,T,V] logits; on CUDA a fused
  // cross-entropy kernel between the head's matmuls).
  at::Tensor next_token_loss(const at::Tensor& idx, const at::Tensor& targets);
  // The LM head's weight [V, C] (the embedding's when tied).
  const at::Tensor& head_weight() const { return config_.tie_embeddings ? wte_->weight : lm_head_->weight; }

  // Caches live on the weights' device, in the compute dtype (blocks may keep some in fp32).
  ModelState init_state(int64_t batch, int64_t max_len) const;
  const ModelConfig& config() const { return config_; }
  // precision: bf16 -> kBFloat16: forward passes on CUDA run under autocast (compat::AutocastGuard)
  // while weights, gradients and optimizer state stay fp32. kFloat (the default): plain fp32.
  void set_compute_dtype(at::ScalarType dtype) { compute_dtype_ = dtype; }
  at::ScalarType compute_dtype() const { return compute_dtype_; }
  // trainer.activation_checkpointing: 0 = none; N >= 1 = the training forward keeps only the input
  // of every N-th block (blocks 0, N, 2N, ...) and runs that block again in backward.
  void set_activation_checkpointing(int64_t every) { checkpoint_every_ = every; }
  int64_t num_parameters() const;
  const std::vector<std::shared_ptr<Block>>& blocks() const { return blocks_; }
  // Declared roles by full parameter name: the model's own (wte and wpe: Embedding, norm: Norm, an
  // untied lm_head: Head) and each block's under "blocks.<i>.". A block declaring a role for a parameter
  // it does not have is an Error naming the block (a typo would silently fall back to the default).
  std::map<std::string, ParamRole> parameter_roles() const;
  std::vector<std::string> block_kinds() const { return config_.layer_kinds(); }
  // The parameters as the optimizers see them: full names, the fused splits (Block::fused_splits)
  // and the roles (parameter_roles()) their blocks and the model declare. With LoRA adapters
  // (model.lora), the adapters' alone: every other weight is frozen (requires_grad false).
  std::vector<NamedParameter> optimizer_parameters() const;
  // The LoRA adapters (lora.h), or null without model.lora.
  const std::shared_ptr<LoraAdapters>& lora() const { return lora_; }

 private:
  ModelConfig config_;
  torch::nn::Embedding wte_{nullptr}, wpe_{nullptr};
  std::vector<std::shared_ptr<Block>> blocks_;
  std::shared_ptr<Norm> norm_;
  torch::nn::Linear lm_head_{nullptr};
  std::shared_ptr<LoraAdapters> lora_;
  at::ScalarType compute_dtype_ = at::kFloat;
  int64_t checkpoint_every_ = 0;
  bool autocast_active() const;
};

}  // namespace linearnexus
