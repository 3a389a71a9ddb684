// flash-linear-attention's (fla) DeltaNetForCausalLM and GatedDeltaNetForCausalLM as models of the
// deltanet and gated_deltanet blocks (hf_fla_deltanet.h). The tensor tables are the only place fla's
// names appear; docs/hf.md compares fla's math with the blocks' line by line.
//
// fla projects q, k and v apart (q_proj, k_proj, v_proj) and convolves them apart (q_conv1d, k_conv1d,
// v_conv1d, [D, 1, K] each); the block fuses both (qkv [3C, C], conv_weight [3C, K]) and declares the
// parts in fused_splits(), which export splits by. beta's b_proj and the decay's a_proj are the
// block's ba rows, beta's first.
//
// What the blocks cannot compute is refused on import, naming config.json's key: heads of another
// width than hidden_size / num_heads (expand_k, expand_v, head_dim, num_v_heads), hybrid attention
// layers (attn), attention residuals (attnres_block_size), negative eigenvalues (allow_neg_eigval),
// beta = 1 (use_beta), other q/k feature maps (qk_activation, qk_norm), DeltaNet's output gate or its
// absence in Gated DeltaNet (use_gate), and MLPs other than SwiGLU (hidden_act). Keys that pick
// kernels or fused implementations of the same math (attn_mode, fuse_norm, fuse_swiglu,
// fuse_cross_entropy, use_l2warp) are not read.
#include "hf_fla_deltanet.h"

#include <cmath>
#include <string>

namespace linearnexus {
namespace {

enum class Variant { DeltaNet, Gated };

const char* block_of(Variant v) { return v == Variant::DeltaNet ? "deltanet" : "gated_deltanet"; }

// fla's GatedMLP width when config.json gives no intermediate_size: 2/3 of hidden_ratio (4 when null)
// times hidden_size, rounded up to a multiple of 256.
int64_t fla_mlp_width(const HFConfig& c, int64_t C) {
  if (c.has("intermediate_size")) return c.integer("intermediate_size");
  const double ratio = c.number("hidden_ratio", 4.0);
  const auto width = static_cast<int64_t>(double(C) * ratio * 2.0 / 3.0);
  return 256 * ((width + 255) / 256);
}

// `fallback`: fla's default when config.json leaves the key out (GatedDeltaNetConfig's expand_v is 2).
void require_one(const HFConfig& c, const std::string& key, double fallback, const std::string& why) {
  if (c.number(key, fallback) != 1.0) c.unsupported(key, "only 1 is implemented (" + why + ")");
}

// What both architectures share; `heads` already checked against hidden_size.
HFFields common_model(const HFConfig& c, Variant v, int64_t heads) {
  if (c.has("attn"))
    c.unsupported("attn", "hybrid models with attention layers are not implemented by this import (every layer is " +
                              std::string(block_of(v)) + "); remove the key only if the model has no such layers");
  if (c.has("attnres_block_size")) c.unsupported("attnres_block_size", "attention residuals are not implemented");
  if (c.flag("allow_neg_eigval", false))
    c.unsupported("allow_neg_eigval", "only beta in (0, 1) is implemented (the block has no 2 beta option)");
  if (c.text("hidden_act", "swish") != "swish")
    c.unsupported("hidden_act", "only swish (fla's SwiGLU GatedMLP) is implemented");
  const int64_t C = c.integer("hidden_size");
  const std::string b = std::string("blocks.") + block_of(v) + ".";
  return {{"vocab_size", std::to_string(c.integer("vocab_size"))},
          {"hidden_size", std::to_string(C)},
          {"n_layer", std::to_string(c.integer("num_hidden_layers"))},
          // no position limit in the blocks; this bounds generation and eval windows
          {"max_seq_len", std::to_string(c.integer("max_position_embeddings", 2048))},
          {"norm", "rmsnorm"},
          {"norm_eps", number_text(c.number("norm_eps", 1e-6))},
          {"positions", "none"},
          {"tie_embeddings", c.flag("tie_word_embeddings", false) ? "true" : "false"},
          {"block_pattern", std::string("[") + block_of(v) + "]"},
          {b + "n_head", std::to_string(heads)},
          {b + "short_conv", c.flag("use_short_conv", true) ? "true" : "false"},
          {b + "conv_size", std::to_string(c.integer("conv_size", 4))},
          {b + "o_norm_eps", number_text(c.number("norm_eps", 1e-6))},
          {b + "mlp", "swiglu"},
          {b + "mlp_hidden", std::to_string(fla_mlp_width(c, C))}};
}

HFFields deltanet_model(const HFConfig& c) {
  if (!c.flag("use_beta", true)) c.unsupported("use_beta", "only a learned beta (b_proj) is implemented");
  if (c.flag("use_gate", false))
    c.unsupported("use_gate", "the deltanet block has no output gate (gated_deltanet has one, with a decay too)");
  if (c.text("qk_activation", "silu") != "silu") c.unsupported("qk_activation", "only silu is implemented");
  if (c.text("qk_norm", "l2") != "l2") c.unsupported("qk_norm", "only l2 is implemented");
  require_one(c, "expand_k", 1.0, "the block's keys are hidden_size wide");
  require_one(c, "expand_v", 1.0, "the block's values are hidden_size wide");
  const int64_t C = c.integer("hidden_size"), heads = c.integer("num_heads", 16);
  if (C % heads != 0) c.unsupported("num_heads", "it must divide hidden_size (" + std::to_string(C) + ")");
  return common_model(c, Variant::DeltaNet, heads);
}

HFFields gated_deltanet_model(const HFConfig& c) {
  if (!c.flag("use_gate", true))
    c.unsupported("use_gate", "the gated_deltanet block always has its output gate (g_proj)");
  require_one(c, "expand_v", 2.0, "the block's value heads are as wide as its key heads");
  const int64_t C = c.integer("hidden_size"), heads = c.integer("num_heads", 6), head_dim = c.integer("head_dim", 256);
  if (heads * head_dim != C)
    c.unsupported("head_dim", "num_heads * head_dim (" + std::to_string(heads) + " * " + std::to_string(head_dim) +
                                  ") must be hidden_size (" + std::to_string(C) +
                                  "): the block's heads are hidden_size / num_heads wide");
  if (c.integer("num_v_heads", heads) != heads)
    c.unsupported("num_v_heads",
                  "only num_v_heads = num_heads (" + std::to_string(heads) + ", or null) is implemented");
  return common_model(c, Variant::Gated, heads);
}

std::string fla_mismatch(const ModelConfig& m, const Params& p, Variant v) {
  const std::string b = std::string("model.blocks.") + block_of(v) + ".";
  if (m.dims.norm != NormKind::RMSNorm) return "model.norm is layernorm";
  if (m.learned_positions) return "model.positions is learned";
  if (p.get_string("mlp") != "swiglu") return b + "mlp is " + p.get_string("mlp") + " (fla's GatedMLP is swiglu)";
  if (p.get_float("o_norm_eps") != m.dims.norm_eps)
    return b + "o_norm_eps (" + number_text(p.get_float("o_norm_eps")) + ") differs from model.norm_eps (" +
           number_text(m.dims.norm_eps) + "); fla has one norm_eps for both";
  return "";
}

HFFields fla_config(const ModelConfig& m, const Params& p, const TensorMap& ours, Variant v) {
  const auto& d = m.dims;
  const int64_t heads = p.get_int("n_head");
  HFFields f = {{"architectures",
                 hf_json_list({hf_json(v == Variant::DeltaNet ? "DeltaNetForCausalLM" : "GatedDeltaNetForCausalLM")})},
                {"model_type", hf_json(v == Variant::DeltaNet ? "delta_net" : "gated_deltanet")},
                {"vocab_size", hf_json(d.vocab_size)},
                {"hidden_size", hf_json(d.hidden_size)},
                {"num_hidden_layers", hf_json(d.n_layer)},
                {"num_heads", hf_json(heads)},
                {"expand_v", hf_json(1.0)},
                {"use_short_conv", hf_json(p.get_bool("short_conv"))},
                {"conv_size", hf_json(p.get_int("conv_size"))},
                {"allow_neg_eigval", hf_json(false)},
                {"attn", hf_json_null()},
                {"attn_mode", hf_json("chunk")},
                {"hidden_act", hf_json("swish")},
                {"intermediate_size", hf_json(ours.at("blocks.0.mlp.up.weight").size(0))},
                {"norm_eps", hf_json(d.norm_eps)},
                {"max_position_embeddings", hf_json(d.max_seq_len)},
                {"tie_word_embeddings", hf_json(m.tie_embeddings)},
                {"torch_dtype", hf_json("float32")}};
  if (v == Variant::DeltaNet) {
    f.insert(f.end(), {{"expand_k", hf_json(1.0)},
                       {"use_gate", hf_json(false)},
                       {"use_beta", hf_json(true)},
                       {"qk_activation", hf_json("silu")},
                       {"qk_norm", hf_json("l2")}});
  } else {
    f.insert(
        f.end(),
        {{"head_dim", hf_json(d.hidden_size / heads)}, {"num_v_heads", hf_json(heads)}, {"use_gate", hf_json(true)}});
  }
  return f;
}

HFArchitecture fla_architecture(Variant v) {
  HFArchitecture a;
  a.name = v == Variant::DeltaNet ? "DeltaNetForCausalLM" : "GatedDeltaNetForCausalLM";
  a.model_type = v == Variant::DeltaNet ? "delta_net" : "gated_deltanet";
  a.base_prefix = "model.";
  a.model_rules = {{{"model.embeddings.weight"}, "wte.weight"},
                   {{"model.norm.weight"}, "norm.weight"},
                   {{"lm_head.weight"}, "lm_head.weight"}};
  const std::string l = "model.layers.{i}.", at = l + "attn.";
  a.layer_rules = {
      {{l + "attn_norm.weight"}, "ln1.weight"},
      {{at + "q_proj.weight", at + "k_proj.weight", at + "v_proj.weight"}, "qkv.weight"},
      {{at + "q_conv1d.weight", at + "k_conv1d.weight", at + "v_conv1d.weight"}, "conv_weight", HFLayout::Conv},
      v == Variant::DeltaNet ? HFTensorRule{{at + "b_proj.weight"}, "ba.weight"}
                             : HFTensorRule{{at + "b_proj.weight", at + "a_proj.weight"}, "ba.weight"},
      {{at + "A_log"}, "A_log"},
      {{at + "dt_bias"}, "dt_bias"},
      {{at + "g_proj.weight"}, "gate.weight"},
      {{at + "o_norm.weight"}, "o_norm.weight"},
      {{at + "o_proj.weight"}, "o_proj.weight"},
      {{l + "mlp_norm.weight"}, "ln2.weight"},
      {{l + "mlp.gate_proj.weight"}, "mlp.gate.weight"},
      {{l + "mlp.up_proj.weight"}, "mlp.up.weight"},
      {{l + "mlp.down_proj.weight"}, "mlp.down.weight"}};
  a.model_section = v == Variant::DeltaNet ? deltanet_model : gated_deltanet_model;
  a.mismatch = [v](const ModelConfig& m, const Params& p) { return fla_mismatch(m, p, v); };
  a.config_json = [v](const ModelConfig& m, const Params& p, const TensorMap& t) { return fla_config(m, p, t, v); };
  return a;
}

}  // namespace

std::shared_ptr<const HFAdapter> fla_deltanet_hf_adapter() {
  auto adapter = std::make_shared<HFAdapter>();
  adapter->architectures = {fla_architecture(Variant::DeltaNet)};
  return adapter;
}

std::shared_ptr<const HFAdapter> fla_gated_deltanet_hf_adapter() {
  auto adapter = std::make_shared<HFAdapter>();
  adapter->architectures = {fla_architecture(Variant::Gated)};
  return adapter;
}

}  // namespace linearnexus
