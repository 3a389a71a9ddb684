#pragma once
// A block's Hugging Face adapter (BlockHooks::hf, registry.h), as torchtitan's state-dict adapters:
// how a model made of this block maps to Hugging Face architectures, both ways. `convert hf-import`
// finds the adapter whose architecture config.json names; `hf-export` asks the model's block for
// the first of its architectures that fits the model. The host runs the tables (names, layouts,
// fused tensors split by Block::fused_splits) and never names a block's parameters itself.
//
// No JSON type crosses the plugin boundary: config.json is read through HFConfig, and what an
// adapter writes is (key, value text) pairs: YAML values for the experiment's model section, JSON
// values for config.json (hf_json_* below make them).
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "linearnexus/model.h"
#include "linearnexus/params.h"
#include "linearnexus/tensor_map.h"

namespace linearnexus {

// How a Hugging Face tensor is laid out against ours.
enum class HFLayout {
  Same,
  Transposed,  // GPT-2's Conv1D stores [in, out]; our Linear weights are [out, in]
  Conv,        // a depthwise conv1d.weight [C, 1, K]; ours is [C, K]
  // The other way round from a rule with several `hf` names: the one Hugging Face tensor `hf` names
  // holds several of ours one after another along dim 0, in the order of the Stacked rules that name
  // it, each as many rows as our tensor has (Mamba-2's in_proj: our in_proj's z, x, B, C rows, then
  // dt_proj's, which the block keeps apart as a decay). Otherwise as Same.
  Stacked,
};

// One of our tensors and the Hugging Face tensor(s) it is made of; several are concatenated along
// dim 0 (Llama's q_proj, k_proj, v_proj -> a fused qkv, split again on export by fused_splits). A
// rule whose tensor our model does not have (a bias the config turns off, the head of a tied model)
// is skipped, so a table lists every tensor the architecture can have.
struct HFTensorRule {
  std::vector<std::string> hf;
  std::string ours;
  HFLayout layout = HFLayout::Same;
};

// config.json, read with errors naming the file and the key.
class HFConfig {
 public:
  virtual ~HFConfig() = default;
  virtual bool has(const std::string& key) const = 0;
  virtual int64_t integer(const std::string& key) const = 0;  // required, positive
  virtual int64_t integer(const std::string& key, int64_t fallback) const = 0;
  virtual double number(const std::string& key, double fallback) const = 0;
  virtual bool flag(const std::string& key, bool fallback) const = 0;
  virtual std::string text(const std::string& key, const std::string& fallback) const = 0;
  // A key of an object-valued key (rope_scaling.rope_type): `fallback` when either is absent.
  virtual std::string text_in(const std::string& object, const std::string& key, const std::string& fallback) const = 0;
  // For a list-valued key, `key` is an element's index: number_in("time_step_limit", "1", ...).
  virtual double number_in(const std::string& object, const std::string& key, double fallback) const = 0;
  // Whether `key` holds a JSON string (rather than a number...).
  virtual bool is_text(const std::string& key) const = 0;
  // Error: "FILE: KEY is VALUE; WHAT" (an option the block does not implement, a bad value).
  [[noreturn]] virtual void unsupported(const std::string& key, const std::string& what) const = 0;
};

// (key, value text) pairs: what an adapter writes.
using HFFields = std::vector<std::pair<std::string, std::string>>;

struct HFArchitecture {
  std::string name;         // config.json "architectures"[0], e.g. LlamaForCausalLM
  std::string model_type;   // config.json "model_type"
  std::string base_prefix;  // the base model's names ("model."): a base model saved alone lacks it
  // The model's own tensors (the SDK's LMModel: wte.weight, wpe.weight, norm.weight, norm.bias,
  // lm_head.weight) and, with "{i}" for the layer, the block's (relative to the block: "qkv.weight").
  std::vector<HFTensorRule> model_rules, layer_rules;
  std::vector<std::string> ignored;  // Hugging Face tensors that hold no weights ("{i}": per layer)
  // config.json -> the experiment's model section: (key under model., YAML value) pairs, e.g.
  // {"hidden_size", "768"}, {"block_pattern", "[attention]"}, {"blocks.attention.n_head", "12"}.
  std::function<HFFields(const HFConfig& config)> model_section;
  // Why a model of this block is not this architecture ("model.norm is layernorm"); "" = it is.
  std::function<std::string(const ModelConfig& model, const Params& block)> mismatch;
  // The model and its tensors (named as in the rules, layer 0's as "blocks.0.<name>") -> config.json:
  // (key, JSON value) pairs, the keys AutoModelForCausalLM needs.
  std::function<HFFields(const ModelConfig& model, const Params& block, const TensorMap& tensors)> config_json;
};

struct HFAdapter {
  std::vector<HFArchitecture> architectures;
};

// JSON value texts for config_json.
std::string hf_json(const std::string& text);  // a JSON string, escaped
std::string hf_json(const char* text);
std::string hf_json(int64_t value);
inline std::string hf_json(int value) { return hf_json(static_cast<int64_t>(value)); }
std::string hf_json(double value);
std::string hf_json(bool value);
std::string hf_json_list(const std::vector<std::string>& item_json);  // [a, b] of JSON texts
inline std::string hf_json_null() { return "null"; }

}  // namespace linearnexus
