// The mamba2 block's Hugging Face architecture (hf_mamba2.h): transformers' Mamba2ForCausalLM. Its
// tensor table is the only place its names and layouts appear.
//
// transformers' mixer projects [z, x, B, C, dt] with one in_proj; the block keeps dt's rows apart
// (dt_proj: a decay, which Muon must not orthogonalise with the features), so in_proj is Stacked from
// our in_proj and dt_proj. Its gated RMSNorm (mixer.norm) spans all d_inner channels on transformers'
// torch path, as the block's gnorm does; mamba_ssm's fused kernels normalise each of the n_groups
// groups apart, so with n_groups > 1 transformers' own CUDA and CPU paths differ and we match the CPU
// one (docs/hf.md).
#include "hf_mamba2.h"

#include <cmath>

namespace linearnexus {
namespace {

HFFields mamba2_model(const HFConfig& c) {
  if (c.text("hidden_act", "silu") != "silu") c.unsupported("hidden_act", "only silu is implemented");
  if (c.flag("use_bias", false)) c.unsupported("use_bias", "in_proj and out_proj without biases are implemented");
  if (!c.flag("rms_norm", true)) c.unsupported("rms_norm", "only the gated RMSNorm is implemented");
  // dt is clamped to time_step_limit; only the default (0, inf), i.e. no clamp, is implemented.
  if (c.number_in("time_step_limit", "0", 0.0) > 0.0 || c.number_in("time_step_limit", "1", 1e308) < 1e300)
    c.unsupported("time_step_limit", "only [0.0, Infinity] (no clamp of dt) is implemented");
  const int64_t C = c.integer("hidden_size"), expand = c.integer("expand", 2);
  const int64_t heads = c.integer("num_heads"), head_dim = c.integer("head_dim", 64);
  if (heads * head_dim != expand * C)
    c.unsupported("num_heads", "num_heads * head_dim (" + std::to_string(heads) + " * " + std::to_string(head_dim) +
                                   ") must be expand * hidden_size (" + std::to_string(expand * C) + ")");
  const int64_t groups = c.integer("n_groups", 1);
  if (heads % groups != 0) c.unsupported("n_groups", "it must divide num_heads (" + std::to_string(heads) + ")");
  return {{"vocab_size", std::to_string(c.integer("vocab_size"))},
          {"hidden_size", std::to_string(C)},
          {"n_layer", std::to_string(c.integer("num_hidden_layers"))},
          {"max_seq_len", "4096"},  // no position limit; this bounds generation and eval windows
          {"norm", "rmsnorm"},
          {"norm_eps", number_text(c.number("layer_norm_epsilon", 1e-5))},
          {"positions", "none"},
          {"tie_embeddings", c.flag("tie_word_embeddings", false) ? "true" : "false"},
          {"block_pattern", "[mamba2]"},
          {"blocks.mamba2.d_state", std::to_string(c.integer("state_size", 128))},
          {"blocks.mamba2.d_conv", std::to_string(c.integer("conv_kernel", 4))},
          {"blocks.mamba2.expand", std::to_string(expand)},
          {"blocks.mamba2.head_dim", std::to_string(head_dim)},
          {"blocks.mamba2.n_groups", std::to_string(groups)},
          {"blocks.mamba2.dt_min", number_text(c.number("time_step_min", 0.001))},
          {"blocks.mamba2.dt_max", number_text(c.number("time_step_max", 0.1))},
          {"blocks.mamba2.dt_init_floor", number_text(c.number("time_step_floor", 1e-4))},
          {"blocks.mamba2.conv_bias", c.flag("use_conv_bias", true) ? "true" : "false"}};
}

std::string mamba2_mismatch(const ModelConfig& m, const Params&) {
  if (m.dims.norm != NormKind::RMSNorm) return "model.norm is layernorm";
  if (m.learned_positions) return "model.positions is learned";
  return "";
}

HFFields mamba2_config(const ModelConfig& m, const Params& p, const TensorMap&) {
  const auto& d = m.dims;
  const int64_t inner = p.get_int("expand") * d.hidden_size, head_dim = p.get_int("head_dim");
  return {{"architectures", hf_json_list({hf_json("Mamba2ForCausalLM")})},
          {"model_type", hf_json("mamba2")},
          {"vocab_size", hf_json(d.vocab_size)},
          {"hidden_size", hf_json(d.hidden_size)},
          {"state_size", hf_json(p.get_int("d_state"))},
          {"num_hidden_layers", hf_json(d.n_layer)},
          {"layer_norm_epsilon", hf_json(d.norm_eps)},
          {"expand", hf_json(p.get_int("expand"))},
          {"num_heads", hf_json(inner / head_dim)},
          {"head_dim", hf_json(head_dim)},
          {"n_groups", hf_json(p.get_int("n_groups"))},
          {"conv_kernel", hf_json(p.get_int("d_conv"))},
          {"chunk_size", hf_json(p.get_int("chunk_size"))},
          {"use_bias", hf_json(false)},
          {"use_conv_bias", hf_json(p.get_bool("conv_bias"))},
          {"hidden_act", hf_json("silu")},
          {"rms_norm", hf_json(true)},
          {"time_step_min", hf_json(p.get_float("dt_min"))},
          {"time_step_max", hf_json(p.get_float("dt_max"))},
          {"time_step_floor", hf_json(p.get_float("dt_init_floor"))},
          // (0, inf) is transformers' default: left out, since JSON cannot write inf.
          {"residual_in_fp32", hf_json(true)},
          {"tie_word_embeddings", hf_json(m.tie_embeddings)},
          {"torch_dtype", hf_json("float32")}};
}

}  // namespace

std::shared_ptr<const HFAdapter> mamba2_hf_adapter() {
  HFArchitecture a;
  a.name = "Mamba2ForCausalLM";
  a.model_type = "mamba2";
  a.base_prefix = "backbone.";
  a.model_rules = {{{"backbone.embeddings.weight"}, "wte.weight"},
                   {{"backbone.norm_f.weight"}, "norm.weight"},
                   {{"lm_head.weight"}, "lm_head.weight"}};
  const std::string l = "backbone.layers.{i}.";
  a.layer_rules = {{{l + "norm.weight"}, "norm.weight"},
                   {{l + "mixer.in_proj.weight"}, "in_proj.weight", HFLayout::Stacked},  // z, x, B, C
                   {{l + "mixer.in_proj.weight"}, "dt_proj.weight", HFLayout::Stacked},  // then dt
                   {{l + "mixer.conv1d.weight"}, "conv_weight", HFLayout::Conv},
                   {{l + "mixer.conv1d.bias"}, "conv_bias"},
                   {{l + "mixer.dt_bias"}, "dt_bias"},
                   {{l + "mixer.A_log"}, "A_log"},
                   {{l + "mixer.D"}, "D"},
                   {{l + "mixer.norm.weight"}, "gnorm.weight"},
                   {{l + "mixer.out_proj.weight"}, "out_proj.weight"}};
  a.model_section = mamba2_model;
  a.mismatch = mamba2_mismatch;
  a.config_json = mamba2_config;
  auto adapter = std::make_shared<HFAdapter>();
  adapter->architectures = {a};
  return adapter;
}

}  // namespace linearnexus
