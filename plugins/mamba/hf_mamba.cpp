// The mamba block's Hugging Face architecture (hf_mamba.h): transformers' MambaForCausalLM. Its
// tensor table is the only place its names and layouts appear.
#include "hf_mamba.h"

namespace linearnexus {
namespace {

HFFields mamba_model(const HFConfig& c) {
  if (c.text("hidden_act", "silu") != "silu") c.unsupported("hidden_act", "only silu is implemented");
  const int64_t C = c.integer("hidden_size"), expand = c.integer("expand", 2);
  if (c.integer("intermediate_size", expand * C) != expand * C)
    c.unsupported("intermediate_size", "it must be expand * hidden_size (" + std::to_string(expand * C) + ")");
  int64_t dt_rank = (C + 15) / 16;  // "auto"
  // A whole number, or the text "auto" (transformers' default); any other text is refused, not read
  // as "auto".
  if (c.is_text("time_step_rank") && c.text("time_step_rank", "auto") != "auto")
    c.unsupported("time_step_rank", "expected a positive whole number or \"auto\"");
  if (c.has("time_step_rank") && !c.is_text("time_step_rank")) dt_rank = c.integer("time_step_rank");
  return {{"vocab_size", std::to_string(c.integer("vocab_size"))},
          {"hidden_size", std::to_string(C)},
          {"n_layer", std::to_string(c.integer("num_hidden_layers"))},
          {"max_seq_len", "4096"},  // Mamba has no position limit; this bounds generation and eval windows
          {"norm", "rmsnorm"},
          {"norm_eps", number_text(c.number("layer_norm_epsilon", 1e-5))},
          {"positions", "none"},
          {"tie_embeddings", c.flag("tie_word_embeddings", true) ? "true" : "false"},
          {"block_pattern", "[mamba]"},
          {"blocks.mamba.d_state", std::to_string(c.integer("state_size", 16))},
          {"blocks.mamba.d_conv", std::to_string(c.integer("conv_kernel", 4))},
          {"blocks.mamba.expand", std::to_string(expand)},
          {"blocks.mamba.dt_rank", "\"" + std::to_string(dt_rank) + "\""},
          {"blocks.mamba.dt_min", number_text(c.number("time_step_min", 0.001))},
          {"blocks.mamba.dt_max", number_text(c.number("time_step_max", 0.1))},
          {"blocks.mamba.dt_init_floor", number_text(c.number("time_step_floor", 1e-4))},
          {"blocks.mamba.conv_bias", c.flag("use_conv_bias", true) ? "true" : "false"},
          {"blocks.mamba.bias", c.flag("use_bias", false) ? "true" : "false"}};
}

std::string mamba_mismatch(const ModelConfig& m, const Params&) {
  if (m.dims.norm != NormKind::RMSNorm) return "model.norm is layernorm";
  if (m.learned_positions) return "model.positions is learned";
  return "";
}

HFFields mamba_config(const ModelConfig& m, const Params& p, const TensorMap& ours) {
  const auto& d = m.dims;
  return {{"architectures", hf_json_list({hf_json("MambaForCausalLM")})},
          {"model_type", hf_json("mamba")},
          {"vocab_size", hf_json(d.vocab_size)},
          {"hidden_size", hf_json(d.hidden_size)},
          {"state_size", hf_json(p.get_int("d_state"))},
          {"num_hidden_layers", hf_json(d.n_layer)},
          {"layer_norm_epsilon", hf_json(d.norm_eps)},
          {"expand", hf_json(p.get_int("expand"))},
          {"conv_kernel", hf_json(p.get_int("d_conv"))},
          {"use_bias", hf_json(p.get_bool("bias"))},
          {"use_conv_bias", hf_json(p.get_bool("conv_bias"))},
          {"hidden_act", hf_json("silu")},
          {"time_step_rank", hf_json(ours.at("blocks.0.dt_proj.weight").size(1))},
          {"time_step_min", hf_json(p.get_float("dt_min"))},
          {"time_step_max", hf_json(p.get_float("dt_max"))},
          {"time_step_floor", hf_json(p.get_float("dt_init_floor"))},
          {"intermediate_size", hf_json(p.get_int("expand") * d.hidden_size)},
          {"residual_in_fp32", hf_json(true)},
          {"tie_word_embeddings", hf_json(m.tie_embeddings)},
          {"torch_dtype", hf_json("float32")}};
}

}  // namespace

std::shared_ptr<const HFAdapter> mamba_hf_adapter() {
  HFArchitecture a;
  a.name = "MambaForCausalLM";
  a.model_type = "mamba";
  a.base_prefix = "backbone.";
  a.model_rules = {{{"backbone.embeddings.weight"}, "wte.weight"},
                   {{"backbone.norm_f.weight"}, "norm.weight"},
                   {{"lm_head.weight"}, "lm_head.weight"}};
  const std::string l = "backbone.layers.{i}.";
  a.layer_rules = {{{l + "norm.weight"}, "norm.weight"},
                   {{l + "mixer.in_proj.weight"}, "in_proj.weight"},
                   {{l + "mixer.in_proj.bias"}, "in_proj.bias"},
                   {{l + "mixer.conv1d.weight"}, "conv_weight", HFLayout::Conv},
                   {{l + "mixer.conv1d.bias"}, "conv_bias"},
                   {{l + "mixer.x_proj.weight"}, "x_proj.weight"},
                   {{l + "mixer.dt_proj.weight"}, "dt_proj.weight"},
                   {{l + "mixer.dt_proj.bias"}, "dt_proj.bias"},
                   {{l + "mixer.A_log"}, "A_log"},
                   {{l + "mixer.D"}, "D"},
                   {{l + "mixer.out_proj.weight"}, "out_proj.weight"},
                   {{l + "mixer.out_proj.bias"}, "out_proj.bias"}};
  a.model_section = mamba_model;
  a.mismatch = mamba_mismatch;
  a.config_json = mamba_config;
  auto adapter = std::make_shared<HFAdapter>();
  adapter->architectures = {a};
  return adapter;
}

}  // namespace linearnexus
