// The `mla` block: DeepSeek-V2 multi-head latent attention (MLA) + MLP, pre-norm residual.
//
//   keys/values:  [c_kv | k_rope] = kv_down(x)          c_kv [B,T,d_c] (then RMSNorm), k_rope [B,T,d_r]
//                 [k_nope | v]    = kv_up(c_kv)          per head: k_nope [dn], v [dv]
//   queries:      [q_nope | q_rope] = wq(x)              or wq = q_up(norm(q_down(x))) when q_lora_rank > 0
//   head h:       k_h = [k_nope_h | rope(k_rope)]  (one RoPE key shared by all heads: "decoupled RoPE")
//                 q_h = [q_nope_h | rope(q_rope_h)]
//   x = x + o_proj(attention(q, k, v));  x = x + mlp(norm(x))
//
// The cache (MLACache) holds only c_kv and the rotated k_rope per token: d_c + d_r numbers instead of
// attention's 2 * n_head * head_dim. Per-head keys and values never need to be stored because
//   q_nope_h . (W_UK_h c) = (W_UK_h^T q_nope_h) . c     (W_UK absorbed into the query)
//   sum_j p_j (W_UV_h c_j) = W_UV_h (sum_j p_j c_j)     (W_UV moved past the attention weights,
//                                                       i.e. absorbed into the output projection)
// so a decode step attends over the latent cache directly. Train/Prefill materialise k/v instead:
// with T queries per step that is cheaper than d_c-wide scores for every head.
#include <linearnexus/compat.h>
#include <linearnexus/error.h>
#include <linearnexus/layers.h>
#include <linearnexus/model.h>
#include <linearnexus/plugin.h>

#include <cmath>
#include <limits>

namespace linearnexus {
namespace {

class MLACache {
 public:
  // "c_kv" [B, max_len, d_c] (normalised latent) and "k_rope" [B, max_len, d_r] (already rotated),
  // filled up to ctx.start. Nothing per head.
  static LayerState make(int64_t B, int64_t max_len, int64_t dc, int64_t dr, const at::TensorOptions& o) {
    LayerState s;
    s.tensors["c_kv"] = at::zeros({B, max_len, dc}, o);
    s.tensors["k_rope"] = at::zeros({B, max_len, dr}, o);
    return s;
  }
  // Write the new tokens at [start, start + T) and return the cache's tokens [0, start + T).
  static std::pair<at::Tensor, at::Tensor> append(LayerState& s, const at::Tensor& c_kv, const at::Tensor& k_rope,
                                                  const ForwardContext& ctx) {
    return {ctx.append_to_cache(s.tensors.at("c_kv"), c_kv, 1), ctx.append_to_cache(s.tensors.at("k_rope"), k_rope, 1)};
  }
};

int64_t positive_or(int64_t v, int64_t fallback) { return v > 0 ? v : fallback; }

class MLABlock : public Block {
 public:
  MLABlock(const ModelDims& d, const Params& p)
      : C_(d.hidden_size), H_(p.get_int("n_head")), rope_base_(p.get_float("rope_base")), dropout_(d.dropout) {
    auto fail = [&](const std::string& m) { throw Error("model.blocks.mla." + m); };
    if (H_ <= 0) fail("n_head must be positive (got " + std::to_string(H_) + ")");
    // Defaults scale with the model: head_dim = C / n_head as in a GPT; the RoPE part is half a head
    // and the latent four heads wide (DeepSeek-V2: 128 / 64 / 512), but at most C / 2 so that small
    // models still compress.
    const int64_t hd = std::max<int64_t>(C_ / H_, 2);
    dn_ = positive_or(p.get_int("qk_nope_head_dim"), hd);
    dr_ = positive_or(p.get_int("qk_rope_head_dim"), std::max<int64_t>(2, hd / 4 * 2));
    dv_ = positive_or(p.get_int("v_head_dim"), hd);
    dc_ = positive_or(p.get_int("kv_lora_rank"), std::max<int64_t>(1, std::min(4 * hd, C_ / 2)));
    dq_ = p.get_int("q_lora_rank");
    if (dr_ % 2 != 0) fail("qk_rope_head_dim must be even (got " + std::to_string(dr_) + ")");
    if (dq_ < 0) fail("q_lora_rank must be >= 0 (0 = full-rank queries)");
    const std::string decode = p.get_string("decode");
    if (decode != "absorbed" && decode != "naive") fail("decode must be absorbed or naive (got '" + decode + "')");
    absorbed_ = decode == "absorbed";
    scale_ = 1.0 / std::sqrt(static_cast<double>(dn_ + dr_));  // what compat::attention uses for [dn | dr]

    auto lin = [](int64_t in, int64_t out) { return torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(false)); };
    ln1_ = register_module("ln1", std::make_shared<Norm>(C_, d));
    // Query rows: [all heads' nope parts | all heads' rope parts] (W_UQ and W_QR of the paper).
    const int64_t q_rows = H_ * (dn_ + dr_);
    if (dq_ > 0) {
      q_down_ = register_module("q_down", lin(C_, dq_));
      q_norm_ = register_module("q_norm", std::make_shared<RMSNorm>(dq_));
      q_up_ = register_module("q_up", lin(dq_, q_rows));
      init_linear(q_down_);
      init_linear(q_up_);
    } else {
      wq_ = register_module("wq", lin(C_, q_rows));
      init_linear(wq_);
    }
    kv_down_ = register_module("kv_down", lin(C_, dc_ + dr_));  // rows [W_DKV | W_KR]
    kv_norm_ = register_module("kv_norm", std::make_shared<RMSNorm>(dc_));
    kv_up_ = register_module("kv_up", lin(dc_, H_ * (dn_ + dv_)));  // rows [W_UK (H dn) | W_UV (H dv)]
    o_proj_ = register_module("o_proj", lin(H_ * dv_, C_));
    tail_ = ResidualMLP(*this, d, p.get_string("mlp"), p.get_int("mlp_hidden"));
    init_linear(kv_down_);
    init_linear(kv_up_);
    init_residual_projection(o_proj_, d.n_layer);
  }

  BlockOutput forward(const at::Tensor& x, LayerState state, const ForwardContext& ctx) override {
    // x: [B, T, C] -> [B, T, C]; state: MLACache (may be empty in Train mode)
    const int64_t B = x.size(0), T = x.size(1);
    auto xn = ln1_->forward(x);
    auto pos = ctx.position_ids(B, T, x.device());                                  // [B or 1, T]
    auto q = dq_ > 0 ? q_up_(q_norm_->forward(q_down_(xn))) : wq_(xn);              // [B, T, H (dn + dr)]
    auto q_nope = q.narrow(-1, 0, H_ * dn_).view({B, T, H_, dn_}).transpose(1, 2);  // [B, H, T, dn]
    auto q_rope = apply_rope(q.narrow(-1, H_ * dn_, H_ * dr_).view({B, T, H_, dr_}).transpose(1, 2), pos, rope_base_);
    auto kv = kv_down_(xn);                                // [B, T, dc + dr]
    auto c_kv = kv_norm_->forward(kv.narrow(-1, 0, dc_));  // [B, T, dc]
    // One RoPE key per token, shared by every head: rotate it once, before caching, so the cache
    // never needs re-rotating.
    auto k_rope = apply_rope(kv.narrow(-1, dc_, dr_).unsqueeze(1), pos, rope_base_).squeeze(1);  // [B, T, dr]
    if (!state.empty()) std::tie(c_kv, k_rope) = MLACache::append(state, c_kv, k_rope, ctx);     // [B, Tk, .]

    at::Tensor o;  // [B, T, H dv]
    if (ctx.mode == Mode::Decode && absorbed_)
      o = attend_absorbed(q_nope, q_rope, c_kv, k_rope, ctx);
    else
      o = attend_materialised(q_nope, q_rope, c_kv, k_rope, ctx);
    return {tail_.forward(x, o_proj_(o), is_training()), std::move(state)};
  }

  // Decoding reads positions and padding from the context only (no host-side step): capturable.
  bool graph_safe_decode() const override { return true; }

  LayerState init_state(int64_t B, int64_t max_len, const at::TensorOptions& o) const override {
    return MLACache::make(B, max_len, dc_, dr_, o);
  }

  std::map<std::string, std::vector<int64_t>> fused_splits() const override {
    std::map<std::string, std::vector<int64_t>> s{{"kv_down.weight", {dc_, dr_}},
                                                  {"kv_up.weight", {H_ * dn_, H_ * dv_}}};
    s[dq_ > 0 ? "q_up.weight" : "wq.weight"] = {H_ * dn_, H_ * dr_};
    return s;
  }

  std::map<std::string, ParamRole> parameter_roles() const override {
    auto roles = tail_.parameter_roles();
    roles["ln1.weight"] = roles["kv_norm.weight"] = ParamRole::Norm;
    declare_roles(roles, *ln1_, "ln1.", ParamRole::Norm);  // a LayerNorm's bias too (model.norm)
    for (const char* w : {"kv_down.weight", "kv_up.weight", "o_proj.weight"}) roles[w] = ParamRole::Matrix;
    if (dq_ > 0) {
      roles["q_down.weight"] = roles["q_up.weight"] = ParamRole::Matrix;
      roles["q_norm.weight"] = ParamRole::Norm;
    } else {
      roles["wq.weight"] = ParamRole::Matrix;
    }
    return roles;
  }

 private:
  // Up-project the latents to per-head keys/values and run ordinary attention: Train and Prefill
  // (and `decode: naive`, which redoes this for the whole cache every step).
  at::Tensor attend_materialised(const at::Tensor& q_nope, const at::Tensor& q_rope, const at::Tensor& c_kv,
                                 const at::Tensor& k_rope, const ForwardContext& ctx) {
    // q_nope [B,H,T,dn], q_rope [B,H,T,dr], c_kv [B,Tk,dc], k_rope [B,Tk,dr] -> [B, T, H dv]
    const int64_t B = q_nope.size(0), T = q_nope.size(2), Tk = c_kv.size(1);
    auto kv = kv_up_(c_kv);                                                             // [B, Tk, H (dn + dv)]
    auto k_nope = kv.narrow(-1, 0, H_ * dn_).view({B, Tk, H_, dn_}).transpose(1, 2);    // [B, H, Tk, dn]
    auto v = kv.narrow(-1, H_ * dn_, H_ * dv_).view({B, Tk, H_, dv_}).transpose(1, 2);  // [B, H, Tk, dv]
    auto k = at::cat({k_nope, k_rope.unsqueeze(1).expand({B, H_, Tk, dr_})}, -1);       // [B, H, Tk, dn + dr]
    auto q = at::cat({q_nope, q_rope}, -1);                                             // [B, H, T, dn + dr]
    auto mask = ctx.visibility_mask(T, Tk, q.device());
    const bool is_causal = !mask.defined() && Tk == T && T > 1;
    auto y = compat::attention(q, k, v.contiguous(), mask, is_causal, is_training() ? dropout_ : 0.0);  // [B,H,T,dv]
    return y.transpose(1, 2).reshape({B, T, H_ * dv_});
  }

  // Attention on the latent cache itself: the decode path. Heads are folded into the rows of one
  // batched matmul per sequence, since every head reads the same c_kv and k_rope.
  at::Tensor attend_absorbed(const at::Tensor& q_nope, const at::Tensor& q_rope, const at::Tensor& c_kv,
                             const at::Tensor& k_rope, const ForwardContext& ctx) {
    // q_nope [B,H,T,dn], q_rope [B,H,T,dr], c_kv [B,Tk,dc], k_rope [B,Tk,dr] -> [B, T, H dv]
    const int64_t B = q_nope.size(0), T = q_nope.size(2), Tk = c_kv.size(1);
    const auto& w = kv_up_->weight;                                    // [H (dn + dv), dc]
    auto w_uk = w.narrow(0, 0, H_ * dn_).view({H_, dn_, dc_});         // per head: k_nope_h = W_UK_h c
    auto w_uv = w.narrow(0, H_ * dn_, H_ * dv_).view({H_, dv_, dc_});  // per head: v_h = W_UV_h c
    // q_lat_h = W_UK_h^T q_nope_h, one [B T, dn] x [dn, dc] matmul per head.
    auto q_lat = at::bmm(q_nope.permute({1, 0, 2, 3}).reshape({H_, B * T, dn_}), w_uk)  // [H, B T, dc]
                     .view({H_, B, T, dc_})
                     .transpose(0, 1);  // [B, H, T, dc]
    auto s = at::bmm(q_lat.reshape({B, H_ * T, dc_}), c_kv.transpose(1, 2)) +
             at::bmm(q_rope.reshape({B, H_ * T, dr_}), k_rope.transpose(1, 2));  // [B, H T, Tk]
    s = s.view({B, H_, T, Tk}) * scale_;
    auto mask = ctx.visibility_mask(T, Tk, s.device(), true);
    if (mask.defined()) s = s.masked_fill(mask.logical_not(), -std::numeric_limits<float>::infinity());
    auto p = at::softmax(s, -1);
    if (is_training() && dropout_ > 0) p = at::dropout(p, dropout_, true);
    auto o_lat = at::bmm(p.view({B, H_ * T, Tk}), c_kv).view({B, H_, T, dc_});  // [B, H, T, dc]
    // o_h = W_UV_h o_lat_h: the value up-projection applied once per query, not once per cached token.
    auto o = at::bmm(o_lat.transpose(0, 1).reshape({H_, B * T, dc_}), w_uv.transpose(1, 2));  // [H, B T, dv]
    return o.view({H_, B, T, dv_}).permute({1, 2, 0, 3}).reshape({B, T, H_ * dv_});
  }

  int64_t C_, H_, dn_ = 0, dr_ = 0, dv_ = 0, dc_ = 0, dq_ = 0;
  double rope_base_, dropout_, scale_ = 1.0;
  bool absorbed_ = true;
  std::shared_ptr<Norm> ln1_;
  std::shared_ptr<RMSNorm> q_norm_, kv_norm_;
  torch::nn::Linear wq_{nullptr}, q_down_{nullptr}, q_up_{nullptr}, kv_down_{nullptr}, kv_up_{nullptr},
      o_proj_{nullptr};
  ResidualMLP tail_;  // ln2 + mlp
};

void register_mla(Registry& r) {
  r.add_block(
      "mla", "DeepSeek-V2 multi-head latent attention (compressed latent KV cache, decoupled RoPE) + MLP",
      join_schemas(
          {
              {"n_head", ParamType::Int, "4", "attention heads", {}, 1},
              {"kv_lora_rank",
               ParamType::Int,
               "0",
               "d_c, the cached latent width (0 = min(4 head_dim, hidden_size / 2))",
               {},
               0},
              {"q_lora_rank", ParamType::Int, "0", "low-rank query width (0 = full-rank queries)", {}, 0},
              {"qk_nope_head_dim",
               ParamType::Int,
               "0",
               "per-head query/key part without RoPE (0 = head_dim = hidden_size / n_head)",
               {},
               0},
              {"qk_rope_head_dim",
               ParamType::Int,
               "0",
               "per-head RoPE part, even; its key is shared by all heads (0 = head_dim / 2)",
               {},
               0},
              {"v_head_dim", ParamType::Int, "0", "per-head value width (0 = head_dim)", {}, 0},
              {"rope_base", ParamType::Float, "10000.0", "RoPE frequency base", {}, 1},
              {"decode",
               ParamType::String,
               "absorbed",
               "decode path: absorbed (on the latent cache) or naive (materialise k/v)",
               {"absorbed", "naive"}},
          },
          mlp_schema()),
      [](const ModelDims& d, const Params& p, int64_t) { return std::make_shared<MLABlock>(d, p); },
      // The scores and the weighted sum, as attention's (12 C T per token, full T x T).
      BlockHooks{[](const ModelDims& d, const Params&, int64_t T) {
                   return 12.0 * static_cast<double>(d.hidden_size) * static_cast<double>(T);
                 },
                 nullptr});
}

}  // namespace
}  // namespace linearnexus

LINEARNEXUS_PLUGIN("mla", "1.0.0", "DeepSeek-V2 multi-head latent attention block with a compressed KV cache",
                   linearnexus::register_mla)
