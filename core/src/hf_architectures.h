#pragma once
// The Hugging Face architectures `convert hf-import` / `hf-export` know (core-internal): for each, its
// config.json <-> our model section, and ONE table mapping its tensor names and layouts to ours, used
// in both directions. hf_convert.cpp runs the tables; nothing else knows a Hugging Face name.
#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "linearnexus/model.h"
#include "linearnexus/tensor_map.h"

namespace linearnexus::hf {

// How a Hugging Face tensor is laid out against ours.
enum class Layout {
  Same,
  Transposed,  // GPT-2's Conv1D stores [in, out]; our Linear weights are [out, in]
  Conv,        // Mamba's conv1d.weight is [C, 1, K]; our conv_weight is [C, K]
};

// One of our tensors and the Hugging Face tensor(s) it is made of. "{i}" stands for the layer. Several
// Hugging Face tensors are concatenated along dim 0 (Llama's q_proj, k_proj, v_proj -> our fused qkv).
// A rule whose tensor our model does not have (a bias the config turns off, the LM head of a tied
// model) is skipped, so each table lists every tensor the architecture can have.
struct TensorRule {
  std::vector<std::string> hf;
  std::string ours;
  Layout layout = Layout::Same;
};

// config.json's keys, read with errors naming the file and the key.
class ConfigReader {
 public:
  ConfigReader(const nlohmann::json& config, std::string file) : j_(config), file_(std::move(file)) {}
  bool has(const std::string& key) const { return j_.contains(key) && !j_.at(key).is_null(); }
  int64_t integer(const std::string& key) const;  // required
  int64_t integer(const std::string& key, int64_t fallback) const;
  double number(const std::string& key, double fallback) const;
  bool flag(const std::string& key, bool fallback) const;
  std::string text(const std::string& key, const std::string& fallback) const;
  const nlohmann::json& raw() const { return j_; }
  // Error: "FILE: KEY is VALUE; WHAT" (an option we do not implement, a bad value).
  [[noreturn]] void unsupported(const std::string& key, const std::string& what) const;

 private:
  const nlohmann::json& j_;
  std::string file_;
};

struct Architecture {
  std::string name;         // config.json "architectures"[0], e.g. LlamaForCausalLM
  std::string model_type;   // config.json "model_type"
  std::string base_prefix;  // the base model's names ("model."): a base model saved alone lacks it
  std::vector<TensorRule> rules;
  std::vector<std::string> ignored;  // Hugging Face tensors that hold no weights (GPT-2's mask buffers)
  // config.json -> our experiment's model section (JSON, which is YAML).
  nlohmann::json (*model_section)(const ConfigReader& config);
  // Our model and its tensors (named as in the rules) -> config.json (the keys AutoModelForCausalLM needs).
  nlohmann::json (*config_json)(const ModelConfig& model, const TensorMap& ours);
};

// The architecture config.json names; an Error naming the file and listing the supported ones.
const Architecture& architecture_named(const std::string& name, const std::string& file);
// The architecture our model has the shape of (export); an Error naming the model key that has no
// Hugging Face counterpart.
const Architecture& architecture_of(const ModelConfig& model, const std::string& source);
std::string supported_names();  // "GPT2LMHeadModel, LlamaForCausalLM, ..."

}  // namespace linearnexus::hf
