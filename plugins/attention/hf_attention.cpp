// The attention block's Hugging Face architectures (hf_attention.h): GPT-2, Llama, Qwen2. Each one's
// tensor table is the only place its names and layouts appear.
#include "hf_attention.h"

namespace linearnexus {
namespace {

std::string yaml_bool(bool b) { return b ? "true" : "false"; }
std::string yaml_number(double x) { return number_text(x); }

// ---- GPT-2 ------------------------------------------------------------------------------------

HFFields gpt2_model(const HFConfig& c) {
  const std::string act = c.text("activation_function", "gelu_new");
  if (act != "gelu_new" && act != "gelu_pytorch_tanh")
    c.unsupported("activation_function", "only the tanh GELU (gelu_new, gelu_pytorch_tanh) is implemented");
  if (!c.flag("scale_attn_weights", true)) c.unsupported("scale_attn_weights", "unscaled attention is not implemented");
  if (c.flag("scale_attn_by_inverse_layer_idx", false))
    c.unsupported("scale_attn_by_inverse_layer_idx", "attention scaled by the layer index is not implemented");
  const int64_t C = c.integer("n_embd");
  return {{"vocab_size", std::to_string(c.integer("vocab_size"))},
          {"hidden_size", std::to_string(C)},
          {"n_layer", std::to_string(c.integer("n_layer"))},
          {"max_seq_len", std::to_string(c.integer("n_positions", 1024))},
          {"norm", "layernorm"},
          {"norm_eps", yaml_number(c.number("layer_norm_epsilon", 1e-5))},
          {"positions", "learned"},
          {"tie_embeddings", yaml_bool(c.flag("tie_word_embeddings", true))},
          {"block_pattern", "[attention]"},
          {"blocks.attention.n_head", std::to_string(c.integer("n_head"))},
          {"blocks.attention.rope", "false"},
          {"blocks.attention.mlp", "gelu"},
          {"blocks.attention.mlp_hidden", std::to_string(c.integer("n_inner", 4 * C))},
          {"blocks.attention.qkv_bias", "true"},
          {"blocks.attention.proj_bias", "true"},
          {"blocks.attention.mlp_bias", "true"}};
}

std::string gpt2_mismatch(const ModelConfig& m, const Params& a) {
  if (!m.learned_positions) return "model.positions is not learned";
  if (m.dims.norm != NormKind::LayerNorm) return "model.norm is rmsnorm";
  if (a.get_int("window") > 0) return "model.blocks.attention.window is set (sliding-window attention)";
  if (a.get_bool("rope")) return "model.blocks.attention.rope is on";
  if (a.get_string("mlp") == "swiglu") return "model.blocks.attention.mlp is swiglu";
  if (!a.get_bool("qkv_bias") || !a.get_bool("proj_bias") || !a.get_bool("mlp_bias"))
    return "model.blocks.attention.qkv_bias/proj_bias/mlp_bias are not all true";
  const int64_t kv = a.get_int("n_kv_head");
  if (kv != 0 && kv != a.get_int("n_head")) return "model.blocks.attention.n_kv_head makes it GQA";
  return "";
}

HFFields gpt2_config(const ModelConfig& m, const Params& a, const TensorMap& ours) {
  const auto& d = m.dims;
  return {{"architectures", hf_json_list({hf_json("GPT2LMHeadModel")})},
          {"model_type", hf_json("gpt2")},
          {"vocab_size", hf_json(d.vocab_size)},
          {"n_positions", hf_json(d.max_seq_len)},
          {"n_ctx", hf_json(d.max_seq_len)},
          {"n_embd", hf_json(d.hidden_size)},
          {"n_layer", hf_json(d.n_layer)},
          {"n_head", hf_json(a.get_int("n_head"))},
          {"n_inner", hf_json(ours.at("blocks.0.mlp.up.weight").size(0))},
          {"activation_function", hf_json("gelu_new")},
          {"layer_norm_epsilon", hf_json(d.norm_eps)},
          {"resid_pdrop", hf_json(d.dropout)},
          {"embd_pdrop", hf_json(d.dropout)},
          {"attn_pdrop", hf_json(d.dropout)},
          {"scale_attn_weights", hf_json(true)},
          {"tie_word_embeddings", hf_json(m.tie_embeddings)},
          {"torch_dtype", hf_json("float32")}};
}

HFArchitecture gpt2() {
  HFArchitecture a;
  a.name = "GPT2LMHeadModel";
  a.model_type = "gpt2";
  a.base_prefix = "transformer.";
  a.model_rules = {{{"transformer.wte.weight"}, "wte.weight"},
                   {{"transformer.wpe.weight"}, "wpe.weight"},
                   {{"transformer.ln_f.weight"}, "norm.weight"},
                   {{"transformer.ln_f.bias"}, "norm.bias"},
                   {{"lm_head.weight"}, "lm_head.weight"}};
  a.layer_rules = {{{"transformer.h.{i}.ln_1.weight"}, "ln1.weight"},
                   {{"transformer.h.{i}.ln_1.bias"}, "ln1.bias"},
                   {{"transformer.h.{i}.attn.c_attn.weight"}, "qkv.weight", HFLayout::Transposed},
                   {{"transformer.h.{i}.attn.c_attn.bias"}, "qkv.bias"},
                   {{"transformer.h.{i}.attn.c_proj.weight"}, "proj.weight", HFLayout::Transposed},
                   {{"transformer.h.{i}.attn.c_proj.bias"}, "proj.bias"},
                   {{"transformer.h.{i}.ln_2.weight"}, "ln2.weight"},
                   {{"transformer.h.{i}.ln_2.bias"}, "ln2.bias"},
                   {{"transformer.h.{i}.mlp.c_fc.weight"}, "mlp.up.weight", HFLayout::Transposed},
                   {{"transformer.h.{i}.mlp.c_fc.bias"}, "mlp.up.bias"},
                   {{"transformer.h.{i}.mlp.c_proj.weight"}, "mlp.down.weight", HFLayout::Transposed},
                   {{"transformer.h.{i}.mlp.c_proj.bias"}, "mlp.down.bias"}};
  a.ignored = {"transformer.h.{i}.attn.bias", "transformer.h.{i}.attn.masked_bias"};
  a.model_section = gpt2_model;
  a.mismatch = gpt2_mismatch;
  a.config_json = gpt2_config;
  return a;
}

// ---- Llama and Qwen2 --------------------------------------------------------------------------

// rope_theta, from transformers 4's key or 5's rope_parameters; scaled RoPE variants are refused.
double rope_theta(const HFConfig& c) {
  for (const char* key : {"rope_scaling", "rope_parameters"}) {
    if (!c.has(key)) continue;
    const std::string type = c.text_in(key, "rope_type", c.text_in(key, "type", "default"));
    if (type != "default")
      c.unsupported(key, "only plain RoPE (rope_type default) is implemented, not scaled variants");
    const double theta = c.number_in(key, "rope_theta", -1);
    if (theta > 0) return theta;
  }
  return c.number("rope_theta", 10000.0);
}

HFFields llama_family_model(const HFConfig& c, bool qwen2) {
  if (c.text("hidden_act", "silu") != "silu") c.unsupported("hidden_act", "only silu (SwiGLU) is implemented");
  const int64_t C = c.integer("hidden_size"), H = c.integer("num_attention_heads");
  if (c.has("head_dim") && c.integer("head_dim") * H != C)
    c.unsupported("head_dim", "only head_dim = hidden_size / num_attention_heads is implemented");
  if (qwen2 && c.flag("use_sliding_window", false))
    c.unsupported("use_sliding_window", "Qwen2's sliding window is not implemented");
  const bool attention_bias = !qwen2 && c.flag("attention_bias", false);
  return {{"vocab_size", std::to_string(c.integer("vocab_size"))},
          {"hidden_size", std::to_string(C)},
          {"n_layer", std::to_string(c.integer("num_hidden_layers"))},
          {"max_seq_len", std::to_string(c.integer("max_position_embeddings", 2048))},
          {"norm", "rmsnorm"},
          {"norm_eps", yaml_number(c.number("rms_norm_eps", 1e-6))},
          {"positions", "none"},
          {"tie_embeddings", yaml_bool(c.flag("tie_word_embeddings", false))},
          {"block_pattern", "[attention]"},
          {"blocks.attention.n_head", std::to_string(H)},
          {"blocks.attention.n_kv_head", std::to_string(c.integer("num_key_value_heads", H))},
          {"blocks.attention.rope", "true"},
          {"blocks.attention.rope_base", yaml_number(rope_theta(c))},
          {"blocks.attention.mlp", "swiglu"},
          {"blocks.attention.mlp_hidden", std::to_string(c.integer("intermediate_size"))},
          {"blocks.attention.qkv_bias", yaml_bool(qwen2 || attention_bias)},
          {"blocks.attention.proj_bias", yaml_bool(attention_bias)},
          {"blocks.attention.mlp_bias", yaml_bool(!qwen2 && c.flag("mlp_bias", false))}};
}

// Llama and Qwen2: RMSNorm, RoPE, SwiGLU, no learned positions; Qwen2 has q/k/v biases alone.
std::string llama_family_mismatch(const ModelConfig& m, const Params& a, bool qwen2) {
  if (m.learned_positions) return "model.positions is learned";
  if (m.dims.norm != NormKind::RMSNorm) return "model.norm is layernorm";
  if (a.get_int("window") > 0) return "model.blocks.attention.window is set (sliding-window attention)";
  if (!a.get_bool("rope")) return "model.blocks.attention.rope is off";
  if (a.get_string("mlp") != "swiglu") return "model.blocks.attention.mlp is gelu";
  const bool qkv = a.get_bool("qkv_bias"), proj = a.get_bool("proj_bias"), mlp = a.get_bool("mlp_bias");
  if (qwen2) return qkv && !proj && !mlp ? "" : "model.blocks.attention biases are not q/k/v only";
  if (qkv && !proj && !mlp) return "model.blocks.attention has q/k/v biases only (that is Qwen2)";
  if (qkv != proj) return "model.blocks.attention.proj_bias differs from qkv_bias";
  return "";
}

HFFields llama_family_config(const ModelConfig& m, const Params& a, const TensorMap& ours, bool qwen2) {
  const auto& d = m.dims;
  const int64_t H = a.get_int("n_head");
  HFFields j = {{"architectures", hf_json_list({hf_json(qwen2 ? "Qwen2ForCausalLM" : "LlamaForCausalLM")})},
                {"model_type", hf_json(qwen2 ? "qwen2" : "llama")},
                {"vocab_size", hf_json(d.vocab_size)},
                {"hidden_size", hf_json(d.hidden_size)},
                {"intermediate_size", hf_json(ours.at("blocks.0.mlp.up.weight").size(0))},
                {"num_hidden_layers", hf_json(d.n_layer)},
                {"num_attention_heads", hf_json(H)},
                {"num_key_value_heads", hf_json(a.get_int("n_kv_head") > 0 ? a.get_int("n_kv_head") : H)},
                {"head_dim", hf_json(d.hidden_size / H)},
                {"hidden_act", hf_json("silu")},
                {"max_position_embeddings", hf_json(d.max_seq_len)},
                {"rms_norm_eps", hf_json(d.norm_eps)},
                {"rope_theta", hf_json(a.get_float("rope_base"))},
                {"rope_scaling", hf_json_null()},
                {"attention_dropout", hf_json(0.0)},
                {"tie_word_embeddings", hf_json(m.tie_embeddings)},
                {"torch_dtype", hf_json("float32")}};
  if (qwen2) {
    j.push_back({"use_sliding_window", hf_json(false)});
    j.push_back({"max_window_layers", hf_json(d.n_layer)});
  } else {
    j.push_back({"attention_bias", hf_json(a.get_bool("qkv_bias"))});
    j.push_back({"mlp_bias", hf_json(a.get_bool("mlp_bias"))});
  }
  return j;
}

HFArchitecture llama_family(bool qwen2) {
  HFArchitecture a;
  a.name = qwen2 ? "Qwen2ForCausalLM" : "LlamaForCausalLM";
  a.model_type = qwen2 ? "qwen2" : "llama";
  a.base_prefix = "model.";
  a.model_rules = {{{"model.embed_tokens.weight"}, "wte.weight"},
                   {{"model.norm.weight"}, "norm.weight"},
                   {{"lm_head.weight"}, "lm_head.weight"}};
  const std::string l = "model.layers.{i}.";
  a.layer_rules = {
      {{l + "input_layernorm.weight"}, "ln1.weight"},
      {{l + "self_attn.q_proj.weight", l + "self_attn.k_proj.weight", l + "self_attn.v_proj.weight"}, "qkv.weight"},
      {{l + "self_attn.q_proj.bias", l + "self_attn.k_proj.bias", l + "self_attn.v_proj.bias"}, "qkv.bias"},
      {{l + "self_attn.o_proj.weight"}, "proj.weight"},
      {{l + "self_attn.o_proj.bias"}, "proj.bias"},
      {{l + "post_attention_layernorm.weight"}, "ln2.weight"},
      {{l + "mlp.gate_proj.weight"}, "mlp.gate.weight"},
      {{l + "mlp.gate_proj.bias"}, "mlp.gate.bias"},
      {{l + "mlp.up_proj.weight"}, "mlp.up.weight"},
      {{l + "mlp.up_proj.bias"}, "mlp.up.bias"},
      {{l + "mlp.down_proj.weight"}, "mlp.down.weight"},
      {{l + "mlp.down_proj.bias"}, "mlp.down.bias"}};
  a.ignored = {l + "self_attn.rotary_emb.inv_freq"};
  a.model_section = [qwen2](const HFConfig& c) { return llama_family_model(c, qwen2); };
  a.mismatch = [qwen2](const ModelConfig& m, const Params& p) { return llama_family_mismatch(m, p, qwen2); };
  a.config_json = [qwen2](const ModelConfig& m, const Params& p, const TensorMap& t) {
    return llama_family_config(m, p, t, qwen2);
  };
  return a;
}

}  // namespace

std::shared_ptr<const HFAdapter> attention_hf_adapter() {
  auto a = std::make_shared<HFAdapter>();
  a->architectures = {gpt2(), llama_family(false), llama_family(true)};
  return a;
}

}  // namespace linearnexus
