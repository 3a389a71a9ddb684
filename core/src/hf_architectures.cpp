// The Hugging Face architectures of `convert` (see hf_architectures.h): GPT-2, Llama, Qwen2, Mamba.
// Each one's tensor table is the only place its names and layouts appear.
#include "hf_architectures.h"

#include <set>

#include "linearnexus/error.h"

using nlohmann::json;

namespace linearnexus::hf {

// ---- config.json ------------------------------------------------------------------------------

void ConfigReader::unsupported(const std::string& key, const std::string& what) const {
  throw Error(file_ + ": " + key + " is " + (j_.contains(key) ? j_.at(key).dump() : std::string("missing")) + "; " + what);
}

int64_t ConfigReader::integer(const std::string& key) const {
  if (!has(key)) throw Error(file_ + ": key '" + key + "' is missing; the architecture needs it");
  if (!j_.at(key).is_number_integer() || j_.at(key).get<int64_t>() <= 0) unsupported(key, "expected a positive whole number");
  return j_.at(key).get<int64_t>();
}
int64_t ConfigReader::integer(const std::string& key, int64_t fallback) const { return has(key) ? integer(key) : fallback; }
double ConfigReader::number(const std::string& key, double fallback) const {
  if (!has(key)) return fallback;
  if (!j_.at(key).is_number()) unsupported(key, "expected a number");
  return j_.at(key).get<double>();
}
bool ConfigReader::flag(const std::string& key, bool fallback) const {
  if (!has(key)) return fallback;
  if (!j_.at(key).is_boolean()) unsupported(key, "expected true or false");
  return j_.at(key).get<bool>();
}
std::string ConfigReader::text(const std::string& key, const std::string& fallback) const {
  if (!has(key)) return fallback;
  if (!j_.at(key).is_string()) unsupported(key, "expected a string");
  return j_.at(key).get<std::string>();
}

namespace {

int64_t rows(const TensorMap& t, const std::string& name) { return t.at(name).size(0); }

// ---- GPT-2 ------------------------------------------------------------------------------------

json gpt2_model(const ConfigReader& c) {
  const std::string act = c.text("activation_function", "gelu_new");
  if (act != "gelu_new" && act != "gelu_pytorch_tanh")
    c.unsupported("activation_function", "only the tanh GELU (gelu_new, gelu_pytorch_tanh) is implemented");
  if (!c.flag("scale_attn_weights", true)) c.unsupported("scale_attn_weights", "unscaled attention is not implemented");
  if (c.flag("scale_attn_by_inverse_layer_idx", false))
    c.unsupported("scale_attn_by_inverse_layer_idx", "attention scaled by the layer index is not implemented");
  const int64_t C = c.integer("n_embd");
  const json attention = {{"n_head", c.integer("n_head")}, {"rope", false},       {"mlp", "gelu"},
                          {"mlp_hidden", c.integer("n_inner", 4 * C)},             {"qkv_bias", true},
                          {"proj_bias", true},                                     {"mlp_bias", true}};
  return {{"vocab_size", std::to_string(c.integer("vocab_size"))},
          {"hidden_size", C},
          {"n_layer", c.integer("n_layer")},
          {"max_seq_len", c.integer("n_positions", 1024)},
          {"norm", "layernorm"},
          {"norm_eps", c.number("layer_norm_epsilon", 1e-5)},
          {"positions", "learned"},
          {"tie_embeddings", c.flag("tie_word_embeddings", true)},
          {"block_pattern", {"attention"}},
          {"blocks", {{"attention", attention}}}};
}

json gpt2_config(const ModelConfig& m, const TensorMap& ours) {
  const auto& d = m.dims;
  return {{"architectures", {"GPT2LMHeadModel"}},
          {"model_type", "gpt2"},
          {"vocab_size", d.vocab_size},
          {"n_positions", d.max_seq_len},
          {"n_ctx", d.max_seq_len},
          {"n_embd", d.hidden_size},
          {"n_layer", d.n_layer},
          {"n_head", m.block_params.at("attention").get_int("n_head")},
          {"n_inner", rows(ours, "blocks.0.mlp.up.weight")},
          {"activation_function", "gelu_new"},
          {"layer_norm_epsilon", d.norm_eps},
          {"resid_pdrop", d.dropout},
          {"embd_pdrop", d.dropout},
          {"attn_pdrop", d.dropout},
          {"scale_attn_weights", true},
          {"tie_word_embeddings", m.tie_embeddings},
          {"torch_dtype", "float32"}};
}

const std::vector<TensorRule> kGpt2Rules = {
    {{"transformer.wte.weight"}, "wte.weight"},
    {{"transformer.wpe.weight"}, "wpe.weight"},
    {{"transformer.h.{i}.ln_1.weight"}, "blocks.{i}.ln1.weight"},
    {{"transformer.h.{i}.ln_1.bias"}, "blocks.{i}.ln1.bias"},
    {{"transformer.h.{i}.attn.c_attn.weight"}, "blocks.{i}.qkv.weight", Layout::Transposed},
    {{"transformer.h.{i}.attn.c_attn.bias"}, "blocks.{i}.qkv.bias"},
    {{"transformer.h.{i}.attn.c_proj.weight"}, "blocks.{i}.proj.weight", Layout::Transposed},
    {{"transformer.h.{i}.attn.c_proj.bias"}, "blocks.{i}.proj.bias"},
    {{"transformer.h.{i}.ln_2.weight"}, "blocks.{i}.ln2.weight"},
    {{"transformer.h.{i}.ln_2.bias"}, "blocks.{i}.ln2.bias"},
    {{"transformer.h.{i}.mlp.c_fc.weight"}, "blocks.{i}.mlp.up.weight", Layout::Transposed},
    {{"transformer.h.{i}.mlp.c_fc.bias"}, "blocks.{i}.mlp.up.bias"},
    {{"transformer.h.{i}.mlp.c_proj.weight"}, "blocks.{i}.mlp.down.weight", Layout::Transposed},
    {{"transformer.h.{i}.mlp.c_proj.bias"}, "blocks.{i}.mlp.down.bias"},
    {{"transformer.ln_f.weight"}, "norm.weight"},
    {{"transformer.ln_f.bias"}, "norm.bias"},
    {{"lm_head.weight"}, "lm_head.weight"},
};

// ---- Llama and Qwen2 --------------------------------------------------------------------------

// rope_theta, from transformers 4's key or 5's rope_parameters; scaled RoPE variants are refused.
double rope_theta(const ConfigReader& c) {
  for (const char* key : {"rope_scaling", "rope_parameters"}) {
    if (!c.has(key)) continue;
    const json& r = c.raw().at(key);
    const json type = r.is_object() ? r.value("rope_type", r.value("type", json("default"))) : json();
    if (type != "default") c.unsupported(key, "only plain RoPE (rope_type default) is implemented, not scaled variants");
    if (r.contains("rope_theta") && r.at("rope_theta").is_number()) return r.at("rope_theta").get<double>();
  }
  return c.number("rope_theta", 10000.0);
}

json llama_family_model(const ConfigReader& c, bool qwen2) {
  if (c.text("hidden_act", "silu") != "silu") c.unsupported("hidden_act", "only silu (SwiGLU) is implemented");
  const int64_t C = c.integer("hidden_size"), H = c.integer("num_attention_heads");
  if (c.has("head_dim") && c.integer("head_dim") * H != C)
    c.unsupported("head_dim", "only head_dim = hidden_size / num_attention_heads is implemented");
  if (qwen2 && c.flag("use_sliding_window", false)) c.unsupported("use_sliding_window", "Qwen2's sliding window is not implemented");
  const bool attention_bias = !qwen2 && c.flag("attention_bias", false);
  const json attention = {{"n_head", H},
                          {"n_kv_head", c.integer("num_key_value_heads", H)},
                          {"rope", true},
                          {"rope_base", rope_theta(c)},
                          {"mlp", "swiglu"},
                          {"mlp_hidden", c.integer("intermediate_size")},
                          {"qkv_bias", qwen2 || attention_bias},
                          {"proj_bias", attention_bias},
                          {"mlp_bias", !qwen2 && c.flag("mlp_bias", false)}};
  return {{"vocab_size", std::to_string(c.integer("vocab_size"))},
          {"hidden_size", C},
          {"n_layer", c.integer("num_hidden_layers")},
          {"max_seq_len", c.integer("max_position_embeddings", 2048)},
          {"norm", "rmsnorm"},
          {"norm_eps", c.number("rms_norm_eps", 1e-6)},
          {"positions", "none"},
          {"tie_embeddings", c.flag("tie_word_embeddings", false)},
          {"block_pattern", {"attention"}},
          {"blocks", {{"attention", attention}}}};
}
json llama_model(const ConfigReader& c) { return llama_family_model(c, false); }
json qwen2_model(const ConfigReader& c) { return llama_family_model(c, true); }

json llama_family_config(const ModelConfig& m, const TensorMap& ours, bool qwen2) {
  const auto& d = m.dims;
  const Params& a = m.block_params.at("attention");
  const int64_t H = a.get_int("n_head");
  json j = {{"architectures", {qwen2 ? "Qwen2ForCausalLM" : "LlamaForCausalLM"}},
            {"model_type", qwen2 ? "qwen2" : "llama"},
            {"vocab_size", d.vocab_size},
            {"hidden_size", d.hidden_size},
            {"intermediate_size", rows(ours, "blocks.0.mlp.up.weight")},
            {"num_hidden_layers", d.n_layer},
            {"num_attention_heads", H},
            {"num_key_value_heads", a.get_int("n_kv_head") > 0 ? a.get_int("n_kv_head") : H},
            {"head_dim", d.hidden_size / H},
            {"hidden_act", "silu"},
            {"max_position_embeddings", d.max_seq_len},
            {"rms_norm_eps", d.norm_eps},
            {"rope_theta", a.get_float("rope_base")},
            {"rope_scaling", nullptr},
            {"attention_dropout", 0.0},
            {"tie_word_embeddings", m.tie_embeddings},
            {"torch_dtype", "float32"}};
  if (qwen2) {
    j["use_sliding_window"] = false;
    j["max_window_layers"] = d.n_layer;
  } else {
    j["attention_bias"] = a.get_bool("qkv_bias");
    j["mlp_bias"] = a.get_bool("mlp_bias");
  }
  return j;
}
json llama_config(const ModelConfig& m, const TensorMap& t) { return llama_family_config(m, t, false); }
json qwen2_config(const ModelConfig& m, const TensorMap& t) { return llama_family_config(m, t, true); }

const std::vector<TensorRule> kLlamaRules = {
    {{"model.embed_tokens.weight"}, "wte.weight"},
    {{"model.layers.{i}.input_layernorm.weight"}, "blocks.{i}.ln1.weight"},
    {{"model.layers.{i}.self_attn.q_proj.weight", "model.layers.{i}.self_attn.k_proj.weight",
      "model.layers.{i}.self_attn.v_proj.weight"},
     "blocks.{i}.qkv.weight"},
    {{"model.layers.{i}.self_attn.q_proj.bias", "model.layers.{i}.self_attn.k_proj.bias",
      "model.layers.{i}.self_attn.v_proj.bias"},
     "blocks.{i}.qkv.bias"},
    {{"model.layers.{i}.self_attn.o_proj.weight"}, "blocks.{i}.proj.weight"},
    {{"model.layers.{i}.self_attn.o_proj.bias"}, "blocks.{i}.proj.bias"},
    {{"model.layers.{i}.post_attention_layernorm.weight"}, "blocks.{i}.ln2.weight"},
    {{"model.layers.{i}.mlp.gate_proj.weight"}, "blocks.{i}.mlp.gate.weight"},
    {{"model.layers.{i}.mlp.gate_proj.bias"}, "blocks.{i}.mlp.gate.bias"},
    {{"model.layers.{i}.mlp.up_proj.weight"}, "blocks.{i}.mlp.up.weight"},
    {{"model.layers.{i}.mlp.up_proj.bias"}, "blocks.{i}.mlp.up.bias"},
    {{"model.layers.{i}.mlp.down_proj.weight"}, "blocks.{i}.mlp.down.weight"},
    {{"model.layers.{i}.mlp.down_proj.bias"}, "blocks.{i}.mlp.down.bias"},
    {{"model.norm.weight"}, "norm.weight"},
    {{"lm_head.weight"}, "lm_head.weight"},
};

// ---- Mamba ------------------------------------------------------------------------------------

json mamba_model(const ConfigReader& c) {
  if (c.text("hidden_act", "silu") != "silu") c.unsupported("hidden_act", "only silu is implemented");
  const int64_t C = c.integer("hidden_size"), expand = c.integer("expand", 2);
  if (c.integer("intermediate_size", expand * C) != expand * C)
    c.unsupported("intermediate_size", "it must be expand * hidden_size (" + std::to_string(expand * C) + ")");
  int64_t dt_rank = (C + 15) / 16;  // "auto"
  if (c.has("time_step_rank") && !c.raw().at("time_step_rank").is_string()) dt_rank = c.integer("time_step_rank");
  const json mamba = {{"d_state", c.integer("state_size", 16)},
                      {"d_conv", c.integer("conv_kernel", 4)},
                      {"expand", expand},
                      {"dt_rank", std::to_string(dt_rank)},
                      {"dt_min", c.number("time_step_min", 0.001)},
                      {"dt_max", c.number("time_step_max", 0.1)},
                      {"dt_init_floor", c.number("time_step_floor", 1e-4)},
                      {"conv_bias", c.flag("use_conv_bias", true)},
                      {"bias", c.flag("use_bias", false)}};
  return {{"vocab_size", std::to_string(c.integer("vocab_size"))},
          {"hidden_size", C},
          {"n_layer", c.integer("num_hidden_layers")},
          {"max_seq_len", 4096},  // Mamba has no position limit; this bounds generation and eval windows
          {"norm", "rmsnorm"},
          {"norm_eps", c.number("layer_norm_epsilon", 1e-5)},
          {"positions", "none"},
          {"tie_embeddings", c.flag("tie_word_embeddings", true)},
          {"block_pattern", {"mamba"}},
          {"blocks", {{"mamba", mamba}}}};
}

json mamba_config(const ModelConfig& m, const TensorMap& ours) {
  const auto& d = m.dims;
  const Params& p = m.block_params.at("mamba");
  return {{"architectures", {"MambaForCausalLM"}},
          {"model_type", "mamba"},
          {"vocab_size", d.vocab_size},
          {"hidden_size", d.hidden_size},
          {"state_size", p.get_int("d_state")},
          {"num_hidden_layers", d.n_layer},
          {"layer_norm_epsilon", d.norm_eps},
          {"expand", p.get_int("expand")},
          {"conv_kernel", p.get_int("d_conv")},
          {"use_bias", p.get_bool("bias")},
          {"use_conv_bias", p.get_bool("conv_bias")},
          {"hidden_act", "silu"},
          {"time_step_rank", ours.at("blocks.0.dt_proj.weight").size(1)},
          {"time_step_min", p.get_float("dt_min")},
          {"time_step_max", p.get_float("dt_max")},
          {"time_step_floor", p.get_float("dt_init_floor")},
          {"intermediate_size", p.get_int("expand") * d.hidden_size},
          {"residual_in_fp32", true},
          {"tie_word_embeddings", m.tie_embeddings},
          {"torch_dtype", "float32"}};
}

const std::vector<TensorRule> kMambaRules = {
    {{"backbone.embeddings.weight"}, "wte.weight"},
    {{"backbone.layers.{i}.norm.weight"}, "blocks.{i}.norm.weight"},
    {{"backbone.layers.{i}.mixer.in_proj.weight"}, "blocks.{i}.in_proj.weight"},
    {{"backbone.layers.{i}.mixer.in_proj.bias"}, "blocks.{i}.in_proj.bias"},
    {{"backbone.layers.{i}.mixer.conv1d.weight"}, "blocks.{i}.conv_weight", Layout::Conv},
    {{"backbone.layers.{i}.mixer.conv1d.bias"}, "blocks.{i}.conv_bias"},
    {{"backbone.layers.{i}.mixer.x_proj.weight"}, "blocks.{i}.x_proj.weight"},
    {{"backbone.layers.{i}.mixer.dt_proj.weight"}, "blocks.{i}.dt_proj.weight"},
    {{"backbone.layers.{i}.mixer.dt_proj.bias"}, "blocks.{i}.dt_proj.bias"},
    {{"backbone.layers.{i}.mixer.A_log"}, "blocks.{i}.A_log"},
    {{"backbone.layers.{i}.mixer.D"}, "blocks.{i}.D"},
    {{"backbone.layers.{i}.mixer.out_proj.weight"}, "blocks.{i}.out_proj.weight"},
    {{"backbone.layers.{i}.mixer.out_proj.bias"}, "blocks.{i}.out_proj.bias"},
    {{"backbone.norm_f.weight"}, "norm.weight"},
    {{"lm_head.weight"}, "lm_head.weight"},
};

const std::vector<Architecture>& architectures() {
  static const std::vector<Architecture> a = {
      {"GPT2LMHeadModel", "gpt2", "transformer.", kGpt2Rules,
       {"transformer.h.{i}.attn.bias", "transformer.h.{i}.attn.masked_bias"}, gpt2_model, gpt2_config},
      {"LlamaForCausalLM", "llama", "model.", kLlamaRules, {"model.layers.{i}.self_attn.rotary_emb.inv_freq"},
       llama_model, llama_config},
      {"Qwen2ForCausalLM", "qwen2", "model.", kLlamaRules, {"model.layers.{i}.self_attn.rotary_emb.inv_freq"},
       qwen2_model, qwen2_config},
      {"MambaForCausalLM", "mamba", "backbone.", kMambaRules, {}, mamba_model, mamba_config},
  };
  return a;
}

}  // namespace

std::string supported_names() {
  std::string out;
  for (const auto& a : architectures()) out += (out.empty() ? "" : ", ") + a.name;
  return out;
}

const Architecture& architecture_named(const std::string& name, const std::string& file) {
  for (const auto& a : architectures())
    if (a.name == name) return a;
  throw Error(file + ": architecture '" + name + "' is not supported; convert reads " + supported_names());
}

const Architecture& architecture_of(const ModelConfig& m, const std::string& source) {
  auto fail = [&](const std::string& key, const std::string& what) -> const Architecture& {
    throw Error(source + ": " + key + " " + what + ", which none of the Hugging Face architectures hf-export writes (" +
                supported_names() + ") has");
  };
  const std::set<std::string> kinds(m.block_pattern.begin(), m.block_pattern.end());
  const bool rms = m.dims.norm == NormKind::RMSNorm;
  if (kinds == std::set<std::string>{"mamba"}) {
    if (!rms) return fail("model.norm", "is layernorm");
    if (m.learned_positions) return fail("model.positions", "is learned");
    return architecture_named("MambaForCausalLM", source);
  }
  if (kinds != std::set<std::string>{"attention"})
    return fail("model.block_pattern", "holds blocks other than only attention or only mamba");
  const Params& a = m.block_params.at("attention");
  if (a.get_int("window") > 0) return fail("model.blocks.attention.window", "is set (sliding-window attention)");
  const bool qkv = a.get_bool("qkv_bias"), proj = a.get_bool("proj_bias"), mlp = a.get_bool("mlp_bias");
  const bool swiglu = a.get_string("mlp") == "swiglu";
  if (m.learned_positions) {  // GPT-2
    if (rms) return fail("model.norm", "is rmsnorm with learned positions");
    if (a.get_bool("rope")) return fail("model.blocks.attention.rope", "is on with learned positions");
    if (swiglu) return fail("model.blocks.attention.mlp", "is swiglu with learned positions");
    if (!qkv || !proj || !mlp) return fail("model.blocks.attention.qkv_bias/proj_bias/mlp_bias", "are not all true with learned positions");
    const int64_t kv = a.get_int("n_kv_head");
    if (kv != 0 && kv != a.get_int("n_head")) return fail("model.blocks.attention.n_kv_head", "is GQA with learned positions");
    return architecture_named("GPT2LMHeadModel", source);
  }
  if (!rms) return fail("model.norm", "is layernorm without learned positions");
  if (!a.get_bool("rope")) return fail("model.blocks.attention.rope", "is off without learned positions");
  if (!swiglu) return fail("model.blocks.attention.mlp", "is gelu without learned positions");
  if (qkv && !proj && !mlp) return architecture_named("Qwen2ForCausalLM", source);
  if (qkv != proj) return fail("model.blocks.attention.proj_bias", "differs from qkv_bias");
  return architecture_named("LlamaForCausalLM", source);
}

}  // namespace linearnexus::hf
