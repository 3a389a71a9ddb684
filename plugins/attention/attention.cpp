// The `attention` block: pre-norm causal self-attention (MHA / GQA / MQA, RoPE, KV cache) + MLP.
//
//   x = x + proj(attention(rope(q), rope(k), v))     q, k, v from one fused qkv projection
//   x = x + mlp(norm(x))
//
// GQA: n_kv_head < n_head key/value heads, each shared by n_head / n_kv_head query heads
// (n_kv_head = 1 is MQA). The KV cache holds only the n_kv_head heads.
#include <linearnexus/compat.h>
#include <linearnexus/error.h>
#include <linearnexus/layers.h>
#include <linearnexus/model.h>
#include <linearnexus/plugin.h>

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
  // Write the new keys/values at [start, start + T) and return the keys/values [0, start + T).
  static std::pair<at::Tensor, at::Tensor> append(LayerState& s, const at::Tensor& k, const at::Tensor& v, int64_t start) {
    auto& kc = s.tensors.at("k");
    auto& vc = s.tensors.at("v");
    const int64_t T = k.size(2);
    TORCH_CHECK(start + T <= kc.size(2), "KV cache overflow: ", start + T, " > ", kc.size(2));
    kc.narrow(2, start, T).copy_(k);
    vc.narrow(2, start, T).copy_(v);
    return {kc.narrow(2, 0, start + T), vc.narrow(2, 0, start + T)};
  }
};

class AttentionBlock : public Block {
 public:
  AttentionBlock(const ModelDims& d, const Params& p)
      : C_(d.hidden_size), H_(p.get_int("n_head")), Hkv_(p.get_int("n_kv_head") > 0 ? p.get_int("n_kv_head") : H_),
        rope_(p.get_bool("rope")), rope_base_(p.get_float("rope_base")), dropout_(d.dropout) {
    if (H_ <= 0 || C_ % H_ != 0)
      throw Error("model.blocks.attention.n_head (" + std::to_string(H_) + ") must divide hidden_size (" + std::to_string(C_) + ")");
    if (H_ % Hkv_ != 0)
      throw Error("model.blocks.attention.n_kv_head (" + std::to_string(Hkv_) + ") must divide n_head (" + std::to_string(H_) + ")");
    D_ = C_ / H_;
    const bool bias = p.get_bool("bias");
    ln1_ = register_module("ln1", std::make_shared<RMSNorm>(C_));
    qkv_ = register_module("qkv", torch::nn::Linear(torch::nn::LinearOptions(C_, (H_ + 2 * Hkv_) * D_).bias(bias)));
    proj_ = register_module("proj", torch::nn::Linear(torch::nn::LinearOptions(H_ * D_, C_).bias(bias)));
    tail_ = ResidualMLP(*this, C_, p.get_string("mlp"), p.get_int("mlp_hidden"), d.n_layer, d.dropout);
    init_linear(qkv_);
    init_residual_projection(proj_, d.n_layer);
  }

  BlockOutput forward(const at::Tensor& x, LayerState state, const ForwardContext& ctx) override {
    // x: [B, T, C]
    const int64_t B = x.size(0), T = x.size(1);
    auto qkv = qkv_(ln1_->forward(x));                                          // [B, T, (H + 2 Hkv) D]
    auto q = qkv.narrow(-1, 0, H_ * D_).view({B, T, H_, D_}).transpose(1, 2);   // [B, H, T, D]
    auto k = qkv.narrow(-1, H_ * D_, Hkv_ * D_).view({B, T, Hkv_, D_}).transpose(1, 2);  // [B, Hkv, T, D]
    auto v = qkv.narrow(-1, (H_ + Hkv_) * D_, Hkv_ * D_).view({B, T, Hkv_, D_}).transpose(1, 2);
    if (rope_) {
      auto pos = ctx.position_ids(B, T, x.device());  // [B or 1, T]
      q = apply_rope(q, pos, rope_base_);
      k = apply_rope(k, pos, rope_base_);
    }
    const bool cached = !state.empty();
    if (cached) std::tie(k, v) = KVCache::append(state, k, v, ctx.start);  // [B, Hkv, start + T, D]
    if (Hkv_ != H_) {
      k = k.repeat_interleave(H_ / Hkv_, 1);  // [B, H, Tk, D]
      v = v.repeat_interleave(H_ / Hkv_, 1);
    }
    const int64_t Tk = k.size(2);  // query i sits at absolute position Tk - T + i
    auto mask = ctx.visibility_mask(T, Tk, x.device());  // [B or 1, 1, T, Tk] or undefined
    const bool is_causal = !mask.defined() && Tk == T && T > 1;
    auto y = compat::attention(q.contiguous(), k.contiguous(), v.contiguous(), mask, is_causal,
                               is_training() ? dropout_ : 0.0);  // [B, H, T, D]
    y = proj_(y.transpose(1, 2).reshape({B, T, H_ * D_}));
    return {tail_.forward(x, y, is_training()), std::move(state)};
  }

  LayerState init_state(int64_t B, int64_t max_len, const at::TensorOptions& o) const override {
    return KVCache::make(B, Hkv_, max_len, D_, o);
  }

  std::map<std::string, std::vector<int64_t>> fused_splits() const override {
    return {{"qkv.weight", {H_ * D_, Hkv_ * D_, Hkv_ * D_}}};
  }

  std::map<std::string, ParamRole> parameter_roles() const override {
    auto roles = tail_.parameter_roles();
    roles["ln1.weight"] = ParamRole::Norm;
    roles["qkv.weight"] = roles["proj.weight"] = ParamRole::Matrix;
    if (qkv_->bias.defined()) roles["qkv.bias"] = roles["proj.bias"] = ParamRole::Bias;
    return roles;
  }

 private:
  int64_t C_, H_, Hkv_, D_ = 0;
  bool rope_;
  double rope_base_, dropout_;
  std::shared_ptr<RMSNorm> ln1_;
  torch::nn::Linear qkv_{nullptr}, proj_{nullptr};
  ResidualMLP tail_;  // ln2 + mlp
};

void register_attention(Registry& r) {
  r.add_block("attention", "pre-norm causal self-attention (MHA/GQA/MQA, RoPE, KV cache) + MLP",
              {
                  {"n_head", ParamType::Int, "4", "query heads; head_dim = hidden_size / n_head", {}, 1},
                  {"n_kv_head", ParamType::Int, "0", "key/value heads (0 = n_head: MHA; 1 = MQA; else GQA)", {}, 0},
                  {"rope", ParamType::Bool, "true", "rotary position embedding on q and k"},
                  {"rope_base", ParamType::Float, "10000.0", "RoPE frequency base", {}, 1},
                  {"mlp", ParamType::String, "swiglu", "MLP kind", {"swiglu", "gelu"}},
                  {"mlp_hidden", ParamType::Int, "0", "MLP width (0 = 8/3 C for swiglu, 4 C for gelu)", {}, 0},
                  {"bias", ParamType::Bool, "false", "biases in the qkv and output projections"},
              },
              [](const ModelDims& d, const Params& p, int64_t) { return std::make_shared<AttentionBlock>(d, p); });
}

}  // namespace
}  // namespace linearnexus

LINEARNEXUS_PLUGIN("attention", "1.0.0", "causal multi-head attention block with RoPE and a KV cache",
                   linearnexus::register_attention)
