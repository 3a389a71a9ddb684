// The block states and the LMModel that stacks block plugins (decoding is the host's generator).
#include "linearnexus/model.h"

#include <cmath>

#include "activation_checkpoint.h"
#include "linearnexus/compat.h"
#include "linearnexus/error.h"
#include "linearnexus/layers.h"
#include "linearnexus/log.h"
#include "linearnexus/loss.h"
#include "linearnexus/registry.h"

namespace linearnexus {

std::vector<std::string> ModelConfig::layer_kinds() const {
  std::vector<std::string> out;
  for (int64_t i = 0; i < dims.n_layer; ++i) out.push_back(block_pattern[i % block_pattern.size()]);
  return out;
}

// ---- states -----------------------------------------------------------------------------------

int64_t LayerState::bytes() const {
  int64_t n = 0;
  for (const auto& [k, t] : tensors) n += t.numel() * static_cast<int64_t>(t.element_size());
  return n;
}

LayerState LayerState::index_select(const at::Tensor& rows) const {
  LayerState out;
  for (const auto& [k, t] : tensors) out.tensors[k] = t.index_select(0, rows.to(t.device()));
  return out;
}

int64_t ModelState::bytes() const {
  int64_t n = 0;
  for (const auto& l : layers) n += l.bytes();
  return n;
}

void LayerState::keep_in_place(const LayerState& got) {
  for (auto& [key, kept] : tensors) {
    auto it = got.tensors.find(key);
    if (it != got.tensors.end() && !it->second.is_same(kept)) kept.copy_(it->second);
  }
}

void ModelState::keep_in_place(const ModelState& got) {
  for (size_t i = 0; i < layers.size(); ++i) layers[i].keep_in_place(got.layers[i]);
}

ModelState ModelState::index_select(const at::Tensor& rows) const {
  ModelState out = *this;
  for (auto& l : out.layers) l = l.index_select(rows);
  if (key_padding.defined()) out.key_padding = key_padding.index_select(0, rows.to(key_padding.device()));
  return out;
}

at::Tensor ForwardContext::visibility_mask(int64_t T, int64_t Tk, const at::Device& dev, bool always) const {
  if (slot.defined()) {  // static decoding: one query at column `slot` over the whole cache
    return memo("visibility_mask:" + std::to_string(Tk), [&] {
      auto mask = at::arange(Tk, slot.options()).unsqueeze(0) <= slot.unsqueeze(1);  // [1, Tk]
      if (key_padding.defined()) mask = mask & key_padding.narrow(1, 0, Tk);         // [B, Tk]
      return mask.unsqueeze(1).unsqueeze(1);                                         // [B or 1, 1, 1, Tk]
    });
  }
  const int64_t offset = Tk - T;
  if (!key_padding.defined() && !(T > 1 && (offset > 0 || always))) return {};
  auto opts = at::TensorOptions().dtype(at::kLong).device(dev);
  auto qi = at::arange(offset, offset + T, opts).unsqueeze(1), kj = at::arange(0, Tk, opts).unsqueeze(0);
  auto mask = (kj <= qi).unsqueeze(0).unsqueeze(0);
  if (key_padding.defined())
    mask = (mask & key_padding.narrow(1, 0, Tk).to(dev).unsqueeze(1).unsqueeze(1)) | (kj == qi);
  return mask;
}

at::Tensor ForwardContext::append_to_cache(const at::Tensor& cache, const at::Tensor& x, int64_t dim) const {
  const int64_t T = x.size(dim);
  if (slot.defined()) {
    TORCH_CHECK(T == 1, "static decoding takes one token per step, got ", T);
    at::Tensor(cache).index_copy_(dim, slot, x.to(cache.scalar_type()));
    return cache;
  }
  TORCH_CHECK(start + T <= cache.size(dim), "cache overflow: ", start + T, " > ", cache.size(dim));
  cache.narrow(dim, start, T).copy_(x);
  return cache.narrow(dim, 0, start + T);
}

at::Tensor ForwardContext::memo(const std::string& key, const std::function<at::Tensor()>& make) const {
  auto it = memo_.find(key);
  if (it == memo_.end()) it = memo_.emplace(key, make()).first;
  return it->second;
}

at::Tensor ForwardContext::new_token_keep(int64_t T, const at::Device& device, at::ScalarType dtype) const {
  if (!key_padding.defined() || slot.defined()) return {};
  return key_padding.narrow(1, start, T).to(device).to(dtype).unsqueeze(-1);
}

at::Tensor ForwardContext::position_ids(int64_t batch, int64_t T, const at::Device& device) const {
  if (positions.defined()) return positions.to(device);
  return at::arange(start, start + T, at::TensorOptions().dtype(at::kLong).device(device)).unsqueeze(0);
}

// ---- LMModel ----------------------------------------------------------------------------------

LMModel::LMModel(const ModelConfig& config, const Registry& registry) : config_(config) {
  const auto& d = config_.dims;
  if (d.hidden_size <= 0 || d.n_layer <= 0 || d.vocab_size <= 0 || d.max_seq_len <= 0)
    throw Error("model: hidden_size, n_layer, vocab_size and max_seq_len must be positive");
  wte_ = register_module("wte", torch::nn::Embedding(d.vocab_size, d.hidden_size));
  {
    torch::NoGradGuard g;
    wte_->weight.normal_(0.0, 0.02);
  }
  if (config_.learned_positions) {
    wpe_ = register_module("wpe", torch::nn::Embedding(d.max_seq_len, d.hidden_size));
    torch::NoGradGuard g;
    wpe_->weight.normal_(0.0, 0.01);  // GPT-2's initialisation of its position table
  }
  auto list = register_module("blocks", torch::nn::ModuleList());
  const auto kinds = config_.layer_kinds();
  for (int64_t i = 0; i < d.n_layer; ++i) {
    auto it = config_.block_params.find(kinds[i]);
    if (it == config_.block_params.end()) throw Error("model: no parameters for block '" + kinds[i] + "'");
    auto block = registry.make_block(kinds[i], d, it->second, i);
    list->push_back(block);
    blocks_.push_back(block);
  }
  norm_ = register_module("norm", std::make_shared<Norm>(d.hidden_size, d));
  if (!config_.tie_embeddings) {
    lm_head_ = register_module("lm_head",
                               torch::nn::Linear(torch::nn::LinearOptions(d.hidden_size, d.vocab_size).bias(false)));
    init_linear(lm_head_);
  }
  if (config_.lora.enabled()) {
    // Registered last: every other parameter keeps its name and its place in the initialisation order.
    lora_ = register_module("lora", std::make_shared<LoraAdapters>(blocks_, parameter_roles(), config_.lora));
    for (auto& kv : named_parameters())
      if (kv.key().rfind("lora.", 0) != 0) kv.value().requires_grad_(false);
  }
}

std::vector<NamedParameter> LMModel::optimizer_parameters() const {
  std::vector<NamedParameter> out;
  std::map<std::string, std::vector<int64_t>> splits;
  for (size_t i = 0; i < blocks_.size(); ++i)
    for (const auto& [name, rows] : blocks_[i]->fused_splits())
      splits["blocks." + std::to_string(i) + "." + name] = rows;
  const auto roles = parameter_roles();
  for (const auto& kv : named_parameters()) {
    if (lora_ && kv.key().rfind("lora.", 0) != 0) continue;  // frozen under adapters
    NamedParameter np{kv.key(), kv.value(), {}, {}};
    if (auto it = splits.find(kv.key()); it != splits.end()) np.split_rows = it->second;
    if (auto it = roles.find(kv.key()); it != roles.end()) np.role = it->second;
    out.push_back(np);
  }
  return out;
}

int64_t LMModel::num_parameters() const {
  int64_t n = 0;
  for (const auto& p : parameters()) n += p.numel();
  return n;
}

std::map<std::string, ParamRole> LMModel::parameter_roles() const {
  std::map<std::string, ParamRole> roles{{"wte.weight", ParamRole::Embedding}};
  declare_roles(roles, *norm_, "norm.", ParamRole::Norm);
  if (wpe_) roles["wpe.weight"] = ParamRole::Embedding;
  if (!config_.tie_embeddings) roles["lm_head.weight"] = ParamRole::Head;
  const auto kinds = config_.layer_kinds();
  for (size_t i = 0; i < blocks_.size(); ++i) {
    const auto params = blocks_[i]->named_parameters();
    for (const auto& [name, role] : blocks_[i]->parameter_roles()) {
      if (!params.contains(name))
        throw Error("block '" + kinds[i] + "' (layer " + std::to_string(i) + ") declares role " + role_name(role) +
                    " for '" + name + "', which is not one of its parameters; check its parameter_roles()");
      roles["blocks." + std::to_string(i) + "." + name] = role;
    }
  }
  // LoRA's A and B are not maps between hidden spaces to orthogonalise: AdamW's (Muon's inner) business.
  if (lora_) declare_roles(roles, *lora_, "lora.", ParamRole::Other);
  return roles;
}

bool LMModel::autocast_active() const { return compute_dtype_ != at::kFloat && wte_->weight.is_cuda(); }

ModelState LMModel::init_state(int64_t batch, int64_t max_len) const {
  ModelState s;
  s.max_len = max_len;
  // In the compute dtype: a bf16 KV cache is read by bf16 attention without a cast per step.
  auto opts = wte_->weight.options().dtype(autocast_active() ? compute_dtype_ : at::kFloat);
  for (const auto& b : blocks_) s.layers.push_back(b->init_state(batch, max_len, opts));
  return s;
}

at::Tensor LMModel::forward_hidden(const at::Tensor& idx, ModelState* state, Mode mode, const at::Tensor& positions) {
  // idx: [B, T] int64 -> h: [B, T, C]
  return final_norm(forward_stream(idx, state, mode, positions));
}

at::Tensor LMModel::final_norm(const at::Tensor& x) {
  // x: [B, T, C] -> [B, T, C]
  compat::AutocastGuard autocast(autocast_active(), compute_dtype_);
  return norm_->forward(x);
}

at::Tensor LMModel::forward_stream(const at::Tensor& idx, ModelState* state, Mode mode, const at::Tensor& positions) {
  // idx: [B, T] int64 -> the last block's output: [B, T, C]
  TORCH_CHECK(idx.dim() == 2, "LMModel expects token ids [B, T], got ", idx.sizes());
  const int64_t T = idx.size(1);
  ForwardContext ctx;
  ctx.mode = mode;
  ctx.positions = positions;
  const bool static_step = state && state->slot.defined();
  if (static_step) {
    if (T != 1 || mode != Mode::Decode || !positions.defined())
      throw Error("static decoding takes one token per row with its positions, in Mode::Decode");
    ctx.slot = state->slot;
    ctx.key_padding = state->key_padding;
    ctx.start = state->length;  // stale in a replayed step; blocks read slot
  } else if (state) {
    ctx.start = state->length;
    if (state->length + T > state->max_len)
      throw Error("sequence of " + std::to_string(state->length + T) + " tokens exceeds the cache (" +
                  std::to_string(state->max_len) + " tokens)");
    if (state->key_padding.defined()) ctx.key_padding = state->key_padding.narrow(1, 0, state->length + T);
  } else if (T > config_.dims.max_seq_len) {
    throw Error("sequence of " + std::to_string(T) + " tokens is longer than model.max_seq_len (" +
                std::to_string(config_.dims.max_seq_len) + ")");
  }
  if (wpe_ && ctx.start + T > config_.dims.max_seq_len)
    throw Error("position " + std::to_string(ctx.start + T - 1) +
                " is past the learned position table (model.max_seq_len = " + std::to_string(config_.dims.max_seq_len) +
                ")");
  if (lora_) lora_->apply();  // each adapted Linear's weight := W0 + scale B A
  compat::AutocastGuard autocast(autocast_active(), compute_dtype_);
  auto x = wte_(idx);                                                      // [B, T, C]
  if (wpe_) x = x + wpe_(ctx.position_ids(idx.size(0), T, idx.device()));  // positions [B or 1, T] < max_seq_len
  if (config_.dims.dropout > 0) x = at::dropout(x, config_.dims.dropout, is_training());
  const bool checkpointing = checkpoint_every_ > 0 && !state && is_training() && at::GradMode::is_enabled();
  for (size_t i = 0; i < blocks_.size(); ++i) {
    if (checkpointing && static_cast<int64_t>(i) % checkpoint_every_ == 0) {
      x = checkpointed_block(*blocks_[i], x, ctx, autocast_active(), compute_dtype_);
      continue;
    }
    auto out = blocks_[i]->forward(x, state ? state->layers[i] : LayerState{}, ctx);
    x = out.y;
    if (static_step) {
      // A captured step must find its state where it left it: a tensor returned in place of the
      // block's own is copied into it (a recurrent block's new SSM state, say).
      state->layers[i].keep_in_place(out.state);
    } else if (state) {
      state->layers[i] = std::move(out.state);
    }
  }
  if (state && !static_step) state->length += T;
  return x;
}

at::Tensor LMModel::head(at::ScalarType dtype, bool padded) const {
  const at::Tensor& w = head_weight();  // [V, C]
  at::Tensor out = w.scalar_type() == dtype ? w : w.to(dtype);
  // On CUDA the logits' row length must be a multiple of 8 elements (16 bytes) for cuBLAS's fast
  // kernels: with GPT-2's 50257 the LM head fell back to unaligned Turing-era kernels, 120 of the
  // 310 ms of a gpt-small step (docs/benchmarks.md). So the matmul runs on the weight padded with
  // zero rows to a multiple of 64 and the logits are its first V columns.
  const int64_t pad = (64 - w.size(0) % 64) % 64;
  return padded && pad > 0 ? at::constant_pad_nd(out, {0, 0, 0, pad}) : out;
}

at::Tensor LMModel::lm_logits(const at::Tensor& h) {
  // h: [B, T, C] -> [B, T, V] (bf16 under precision: bf16; losses cast to fp32)
  compat::AutocastGuard autocast(autocast_active(), compute_dtype_);
  const int64_t V = head_weight().size(0);
  if (!h.is_cuda()) return at::matmul(h, head_weight().t());
  // The padded head (a view of its first V columns; the padding's gradient is dropped). Autocast
  // casts it to the compute dtype as it would the plain weight.
  return at::matmul(h, head(head_weight().scalar_type(), /*padded=*/true).t()).narrow(-1, 0, V);
}

at::Tensor LMModel::forward(const at::Tensor& idx, ModelState* state, Mode mode, const at::Tensor& positions) {
  return lm_logits(forward_hidden(idx, state, mode, positions));
}

at::Tensor LMModel::next_token_loss(const at::Tensor& idx, const at::Tensor& targets) {
  // idx, targets: [B, T]
  auto h = forward_hidden(idx);
  // The head's matmuls in the autocast dtype on CUDA (as lm_logits); the loss is fp32 either way.
  return lm_head_loss(h, head_weight(), targets, autocast_active() ? compute_dtype_ : h.scalar_type());
}

}  // namespace linearnexus
