// The `attention` block: pre-norm causal self-attention (MHA / GQA / MQA, RoPE, KV cache) + MLP.
//
//   x = x + proj(attention(rope(q), rope(k), v))     q, k, v from one fused qkv projection
//   x = x + mlp(norm(x))
//
// GQA: n_kv_head < n_head key/value heads, each shared by n_head / n_kv_head query heads
// (n_kv_head = 1 is MQA). The KV cache holds only the n_kv_head heads.
//
// Sliding window (`window: N`, or the `swa` block, the same block with a window by default): each
// token sees the last N tokens, itself included; training masks the rest, and decoding keeps a ring
// buffer of N tokens (token p in slot p % N) instead of a max_len cache, so [swa, swa, attention]
// patterns mix windowed and full layers.
#include <linearnexus/compat.h>
#include <linearnexus/error.h>
#include <linearnexus/layers.h>
#include <linearnexus/model.h>
#include <linearnexus/plugin.h>

#include "decode_attention_gpu.h"
#include "hf_attention.h"

#include <cstdlib>
#include <cstring>
#include <limits>

namespace linearnexus {
namespace {

class KVCache {
 public:
  // The block's LayerState holds "k" and "v": [B, n_kv_head, max_len, head_dim], filled up to ctx.start.
  static LayerState make(int64_t B, int64_t n_kv, int64_t max_len, int64_t hd, const at::TensorOptions& o) {
    LayerState s;
    s.tensors["k"] = at::zeros({B, n_kv, max_len, hd}, o);
    s.tensors["v"] = at::zeros({B, n_kv, max_len, hd}, o);
    return s;
  }
  // Write the new keys/values at [start, start + T) and return the keys/values [0, start + T)
  // (static decoding: at ctx.slot, and the whole cache).
  static std::pair<at::Tensor, at::Tensor> append(LayerState& s, const at::Tensor& k, const at::Tensor& v,
                                                  const ForwardContext& ctx) {
    return {ctx.append_to_cache(s.tensors.at("k"), k, 2), ctx.append_to_cache(s.tensors.at("v"), v, 2)};
  }
};

// The window's cache: "k", "v" [B, n_kv_head, W, head_dim], token p in slot p % W.
struct RingKV {
  // Store the new keys/values (the last W of them) and return the keys/values of positions
  // [start - P, start + T), P = min(start, W), in order: the window's history and the new tokens.
  static std::pair<at::Tensor, at::Tensor> append(LayerState& s, const at::Tensor& k, const at::Tensor& v,
                                                  int64_t start) {
    auto& kc = s.tensors.at("k");
    auto& vc = s.tensors.at("v");
    const int64_t W = kc.size(2), T = k.size(2), P = std::min(start, W), m = std::min(T, W);
    auto longs = at::TensorOptions().dtype(at::kLong).device(k.device());
    at::Tensor keys = k, values = v;
    if (P > 0) {  // read before writing: the new tokens may overwrite these slots
      auto slots = at::arange(start - P, start, longs).remainder(W);
      keys = at::cat({kc.index_select(2, slots).to(k.scalar_type()), k}, 2);
      values = at::cat({vc.index_select(2, slots).to(v.scalar_type()), v}, 2);
    }
    auto slots = at::arange(start + T - m, start + T, longs).remainder(W);
    kc.index_copy_(2, slots, k.narrow(2, T - m, m).to(kc.scalar_type()));
    vc.index_copy_(2, slots, v.narrow(2, T - m, m).to(vc.scalar_type()));
    return {keys, values};
  }
  // Static decoding (ForwardContext::slot): the token at column s goes to ring slot s % W and the
  // whole ring is returned; ring slot j holds column s - ((s - j) mod W), the latest one <= s, which
  // *mask ([B or 1, 1, 1, W]) shows when it was written (>= 0) and is not padding. The keys carry
  // their rotation already, so their order in the ring does not matter.
  static std::pair<at::Tensor, at::Tensor> append_static(LayerState& s, const at::Tensor& k, const at::Tensor& v,
                                                         const ForwardContext& ctx, at::Tensor* mask) {
    auto& kc = s.tensors.at("k");
    auto& vc = s.tensors.at("v");
    const int64_t W = kc.size(2);
    auto ring = ctx.slot.remainder(W);
    kc.index_copy_(2, ring, k.to(kc.scalar_type()));
    vc.index_copy_(2, ring, v.to(vc.scalar_type()));
    auto held = ctx.slot - (ctx.slot - at::arange(W, ctx.slot.options())).remainder(W);  // [W] columns
    auto visible = (held >= 0).unsqueeze(0);                                             // [1, W]
    if (ctx.key_padding.defined()) visible = visible & ctx.key_padding.index_select(1, held.clamp_min(0));
    *mask = visible.unsqueeze(1).unsqueeze(1);
    return {kc, vc};
  }
};

// Queries at absolute positions start .. start + T - 1 over keys at k0 .. k0 + Tk - 1: key j is
// visible to query i when k0 + j <= start + i < k0 + j + window and the key is not padding (a query
// always sees itself, so no row is empty). -> [B or 1, 1, T, Tk] bool
at::Tensor window_mask(const ForwardContext& ctx, int64_t T, int64_t k0, int64_t Tk, int64_t window,
                       const at::Device& dev) {
  auto longs = at::TensorOptions().dtype(at::kLong).device(dev);
  auto qp = at::arange(ctx.start, ctx.start + T, longs).unsqueeze(1), kp = at::arange(k0, k0 + Tk, longs).unsqueeze(0);
  auto mask = ((kp <= qp) & (qp - kp < window)).unsqueeze(0).unsqueeze(0);  // [1, 1, T, Tk]
  if (ctx.key_padding.defined())
    mask = (mask & ctx.key_padding.narrow(1, k0, Tk).to(dev).unsqueeze(1).unsqueeze(1)) | (kp == qp);
  return mask;
}

// LINEARNEXUS_DECODE_ATTENTION=splitkv: the static decode step (CUDA, window 0) attends with the
// split-KV kernel (decode_attention.cu) instead of SDPA over the whole cache. Off by default: the
// kernel has been verified only in its CPU emulator (emu/run.sh), never run on a GPU. Read at every
// call (a getenv), so a captured step keeps what it was captured with.
bool splitkv_decode() {
  const char* e = std::getenv("LINEARNEXUS_DECODE_ATTENTION");
  return e && std::strcmp(e, "splitkv") == 0;
}

class AttentionBlock : public Block {
 public:
  AttentionBlock(const ModelDims& d, const Params& p, const std::string& name)
      : C_(d.hidden_size),
        H_(p.get_int("n_head")),
        Hkv_(p.get_int("n_kv_head") > 0 ? p.get_int("n_kv_head") : H_),
        window_(p.get_int("window")),
        rope_(p.get_bool("rope")),
        rope_base_(p.get_float("rope_base")),
        dropout_(d.dropout) {
    if (H_ <= 0 || C_ % H_ != 0)
      throw Error("model.blocks." + name + ".n_head (" + std::to_string(H_) + ") must divide hidden_size (" +
                  std::to_string(C_) + ")");
    if (H_ % Hkv_ != 0)
      throw Error("model.blocks." + name + ".n_kv_head (" + std::to_string(Hkv_) + ") must divide n_head (" +
                  std::to_string(H_) + ")");
    D_ = C_ / H_;
    ln1_ = register_module("ln1", std::make_shared<Norm>(C_, d));
    qkv_ = register_module(
        "qkv", torch::nn::Linear(torch::nn::LinearOptions(C_, (H_ + 2 * Hkv_) * D_).bias(p.get_bool("qkv_bias"))));
    proj_ =
        register_module("proj", torch::nn::Linear(torch::nn::LinearOptions(H_ * D_, C_).bias(p.get_bool("proj_bias"))));
    tail_ = ResidualMLP(*this, d, p.get_string("mlp"), p.get_int("mlp_hidden"), p.get_bool("mlp_bias"));
    init_linear(qkv_);
    init_residual_projection(proj_, d.n_layer);
  }

  BlockOutput forward(const at::Tensor& x, LayerState state, const ForwardContext& ctx) override {
    // x: [B, T, C]
    const int64_t B = x.size(0), T = x.size(1);
    // x_res is x as the residual stream carries it on (tail_ below): on CUDA, ln1's backward then
    // also sums the stream's gradient of x (layers.h's forward_residual). Decoding: one skinny matmul,
    // with ln1 in its prologue under LINEARNEXUS_DECODE_FUSION=1 (norm_linear_forward).
    at::Tensor x_res, qkv;  // qkv: [B, T, (H + 2 Hkv) D]
    std::tie(x_res, qkv) = norm_linear_forward(*ln1_, x, qkv_->weight, qkv_->bias);
    // The heads' outputs o [B, T, H D] -> the block's output: proj, the residual add and the MLP tail.
    // With decode fusion the add is proj's epilogue and ln2 the up projection's prologue (3 kernels).
    auto finish = [&](const at::Tensor& o) {
      if (!is_training() && tail_.forward_sum_fused(x_res)) return tail_.forward_sum(linear_forward(proj_, o, x_res));
      return tail_.forward(x_res, linear_forward(proj_, o), is_training());
    };
    at::Tensor q, k, v;
    if (rope_ && ctx.slot.defined()) {
      // Static decoding (T = 1): queries and keys rotated together by the step's rotation matrix.
      v = qkv.narrow(-1, (H_ + Hkv_) * D_, Hkv_ * D_).view({B, T, Hkv_, D_}).transpose(1, 2);  // [B, Hkv, 1, D]
      auto R = ctx.memo("rope_matrix:" + std::to_string(D_) + ":" + std::to_string(rope_base_),
                        [&] { return rope_matrix(ctx.positions, D_, rope_base_, qkv.scalar_type()); });  // [B, D, D]
      auto qk = at::matmul(qkv.narrow(-1, 0, (H_ + Hkv_) * D_).view({B, H_ + Hkv_, D_}), R);  // [B, H + Hkv, D]
      q = qk.narrow(1, 0, H_).unsqueeze(2);                                                   // [B, H, 1, D]
      k = qk.narrow(1, H_, Hkv_).unsqueeze(2);                                                // [B, Hkv, 1, D]
    } else {
      auto pos = rope_ ? ctx.position_ids(B, T, x.device()) : at::Tensor();  // [B or 1, T]
      auto heads = split_heads(qkv, pos, H_, Hkv_, D_, rope_, rope_base_);   // [B, H, T, D], [B, Hkv, T, D] x2
      q = heads.q, k = heads.k, v = heads.v;
    }
    const bool cached = !state.empty();
    int64_t k0 = 0;   // the absolute position of the first key
    at::Tensor mask;  // [B or 1, 1, T, Tk] or undefined
    if (cached && window_ > 0 && ctx.slot.defined()) {
      std::tie(k, v) = RingKV::append_static(state, k, v, ctx, &mask);  // [B, Hkv, W, D]
    } else if (cached && window_ > 0) {
      k0 = std::max<int64_t>(0, ctx.start - state.tensors.at("k").size(2));
      std::tie(k, v) = RingKV::append(state, k, v, ctx.start);  // [B, Hkv, min(start, W) + T, D]
    } else if (cached) {
      std::tie(k, v) = KVCache::append(state, k, v, ctx);  // [B, Hkv, start + T (static: max_len), D]
    }
    if (cached && window_ == 0 && ctx.slot.defined() && x.is_cuda() && splitkv_decode()) {
      // Static decoding on CUDA behind LINEARNEXUS_DECODE_ATTENTION=splitkv (never run on a GPU yet:
      // verified only in the CPU emulator, plugins/attention/emu): the query over the cache's columns
      // <= slot, split across CTAs, K and V read once per KV head (no repeat_interleave), the slot
      // read on the device. Operands it does not take (another head_dim, a dtype mismatch) keep SDPA.
      auto q1 = q.squeeze(2);  // [B, H, D]
      if (attention::decode_attention_applies(q1, k, v, ctx.key_padding)) {
        auto o = attention::decode_attention_cuda(q1, k, v, ctx.key_padding, ctx.slot);  // [B, H, D]
        return {finish(o.view({B, 1, H_ * D_})), std::move(state)};
      }
    }
    if (Hkv_ != H_) {
      k = k.repeat_interleave(H_ / Hkv_, 1);  // [B, H, Tk, D]
      v = v.repeat_interleave(H_ / Hkv_, 1);
    }
    const int64_t Tk = k.size(2);  // query i sits at absolute position Tk - T + i (+ k0)
    if (!mask.defined())
      mask = window_ > 0 ? window_mask(ctx, T, k0, Tk, window_, x.device()) : ctx.visibility_mask(T, Tk, x.device());
    if (ctx.slot.defined() && x.is_cuda()) {
      // Static decoding: the mask as the additive bias SDPA would convert it to in every layer, made
      // once per step (two kernels a layer fewer).
      const auto& m = mask;
      mask = ctx.memo("attention_bias:" + std::to_string(window_) + ":" + std::to_string(Tk), [&] {
        return at::zeros(m.sizes(), q.options()).masked_fill(m.logical_not(), -std::numeric_limits<double>::infinity());
      });
    }
    const bool is_causal = !mask.defined() && Tk == T && T > 1;
    // SDPA reads head-major [B, H, T, D] or token-major (a transposed [B, T, H, D], what split_heads
    // gives on CUDA) without a copy, and writes its output in q's layout: token-major, the transpose
    // to [B, T, H D] below is then a view (and its gradient one too).
    auto dense = [](const at::Tensor& t) {
      return t.is_contiguous() || t.transpose(1, 2).is_contiguous() ? t : t.contiguous();
    };
    auto y = compat::attention(dense(q), dense(k), dense(v), mask, is_causal,
                               is_training() ? dropout_ : 0.0);  // [B, H, T, D]
    return {finish(y.transpose(1, 2).reshape({B, T, H_ * D_})), std::move(state)};
  }

  // Decoding reads positions and padding from the context only (no host-side step): capturable.
  bool graph_safe_decode() const override { return true; }

  LayerState init_state(int64_t B, int64_t max_len, const at::TensorOptions& o) const override {
    // A window needs only its last `window` tokens: a ring buffer of that many slots.
    return KVCache::make(B, Hkv_, window_ > 0 ? std::min(window_, max_len) : max_len, D_, o);
  }

  std::map<std::string, std::vector<int64_t>> fused_splits() const override {
    return {{"qkv.weight", {H_ * D_, Hkv_ * D_, Hkv_ * D_}}};
  }

  std::map<std::string, ParamRole> parameter_roles() const override {
    auto roles = tail_.parameter_roles();
    declare_roles(roles, *ln1_, "ln1.", ParamRole::Norm);
    roles["qkv.weight"] = roles["proj.weight"] = ParamRole::Matrix;
    if (qkv_->bias.defined()) roles["qkv.bias"] = ParamRole::Bias;
    if (proj_->bias.defined()) roles["proj.bias"] = ParamRole::Bias;
    return roles;
  }

 private:
  int64_t C_, H_, Hkv_, window_, D_ = 0;
  bool rope_;
  double rope_base_, dropout_;
  std::shared_ptr<Norm> ln1_;
  torch::nn::Linear qkv_{nullptr}, proj_{nullptr};
  ResidualMLP tail_;  // ln2 + mlp
};

Schema attention_schema(const std::string& window_default, double window_min) {
  return join_schemas(
      {
          {"n_head", ParamType::Int, "4", "query heads; head_dim = hidden_size / n_head", {}, 1},
          {"n_kv_head", ParamType::Int, "0", "key/value heads (0 = n_head: MHA; 1 = MQA; else GQA)", {}, 0},
          {"rope", ParamType::Bool, "true", "rotary position embedding on q and k"},
          {"rope_base", ParamType::Float, "10000.0", "RoPE frequency base (Hugging Face's rope_theta)", {}, 1},
          {"qkv_bias", ParamType::Bool, "false", "biases in the q, k and v projections (GPT-2, Qwen2)"},
          {"proj_bias", ParamType::Bool, "false", "a bias in the output projection (GPT-2)"},
          {"mlp_bias", ParamType::Bool, "false", "biases in the MLP's projections (GPT-2)"},
          {"window",
           ParamType::Int,
           window_default,
           "sliding window: each token sees the last N tokens (itself included), decoding keeps a ring "
           "buffer of N; 0 = full causal attention",
           {},
           window_min},
      },
      mlp_schema("(swiglu: Llama; gelu: the tanh approximation, GPT-2)"));
}

// The scores and the weighted sum: 2 matmuls of T x T x C, forward and backward (12 C T per token),
// counted as full causal attention (the nanoGPT / PaLM convention; a window is not discounted).
double attention_flops(const ModelDims& d, const Params&, int64_t T) {
  return 12.0 * static_cast<double>(d.hidden_size) * static_cast<double>(T);
}

void register_attention(Registry& r) {
  BlockHooks hooks;
  hooks.extra_flops_per_token = attention_flops;
  hooks.hf = attention_hf_adapter();
  r.add_block(
      "attention", "pre-norm causal self-attention (MHA/GQA/MQA, RoPE, KV cache, optional sliding window) + MLP",
      attention_schema("0", 0),
      [](const ModelDims& d, const Params& p, int64_t) { return std::make_shared<AttentionBlock>(d, p, "attention"); },
      hooks);
  // The same block with a window by default, as its own name: a block_pattern names each kind once,
  // so [swa, swa, attention] needs two names to configure the two kinds differently.
  BlockHooks swa_hooks;
  swa_hooks.extra_flops_per_token = attention_flops;
  r.add_block(
      "swa", "sliding-window attention: the attention block with window: N (a ring-buffer KV cache of N tokens)",
      attention_schema("256", 1),
      [](const ModelDims& d, const Params& p, int64_t) { return std::make_shared<AttentionBlock>(d, p, "swa"); },
      swa_hooks);
}

}  // namespace
}  // namespace linearnexus

LINEARNEXUS_PLUGIN("attention", "1.0.0", "causal multi-head attention block with RoPE and a KV cache",
                   linearnexus::register_attention)
