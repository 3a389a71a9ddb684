#pragma once
// The Hugging Face architectures `convert hf-import` / `hf-export` know: the block registrations'
// adapters (BlockHooks::hf, hf_adapter.h). Host-internal; nothing here names a block's parameters.
#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "linearnexus/hf_adapter.h"
#include "linearnexus/model.h"
#include "linearnexus/registry.h"

namespace linearnexus::hf {

// config.json's keys (HFConfig), read with errors naming the file and the key.
class ConfigReader final : public HFConfig {
 public:
  ConfigReader(const nlohmann::json& config, std::string file) : j_(config), file_(std::move(file)) {}
  bool has(const std::string& key) const override { return j_.contains(key) && !j_.at(key).is_null(); }
  int64_t integer(const std::string& key) const override;
  int64_t integer(const std::string& key, int64_t fallback) const override;
  double number(const std::string& key, double fallback) const override;
  bool flag(const std::string& key, bool fallback) const override;
  std::string text(const std::string& key, const std::string& fallback) const override;
  std::string text_in(const std::string& object, const std::string& key, const std::string& fallback) const override;
  double number_in(const std::string& object, const std::string& key, double fallback) const override;
  bool is_text(const std::string& key) const override { return has(key) && j_.at(key).is_string(); }
  [[noreturn]] void unsupported(const std::string& key, const std::string& what) const override;

 private:
  const nlohmann::json& j_;
  std::string file_;
};

// An architecture and the block whose adapter describes it.
struct Found {
  const HFArchitecture* architecture;
  std::string block;
};
// The architecture config.json names; an Error naming the file and listing the supported ones.
Found architecture_named(const Registry& registry, const std::string& name, const std::string& file);
// The architecture a model is (export): its one block kind's first architecture that fits. An
// Error naming the block, or each architecture's reason, when none does.
Found architecture_of(const Registry& registry, const ModelConfig& model, const std::string& source);
std::string supported_names(const Registry& registry);  // "GPT2LMHeadModel (attention), ..."

// ---- an architecture's tensor table --------------------------------------------------------------

// A rule's names for layer i ("{i}" replaced); model-level rules have no "{i}" and one instance.
std::string at_layer(std::string name, int64_t i);
bool per_layer(const HFTensorRule& r);
// The layers a rule has in a model of n_layer layers: 0..n_layer-1, or just 0 for a model-level one.
std::vector<int64_t> layers_of(const HFTensorRule& r, int64_t n_layer);
// An architecture's whole table: the model's own rules, and the block's with "blocks.{i}." before
// its names (an adapter names its block's tensors relative to the block).
std::vector<HFTensorRule> all_rules(const HFArchitecture& a);
// How many layers a set of Hugging Face tensor names holds by the architecture's per-layer rules
// (the highest "{i}" present + 1; 0 when none): what config.json's layer count must agree with.
int64_t layer_index_in(const HFArchitecture& a, const std::string& hf_name);  // -1: no per-layer rule's

template <class Names>
int64_t layers_in(const HFArchitecture& a, const Names& names) {
  int64_t n = 0;
  for (const auto& kv : names) n = std::max(n, layer_index_in(a, kv.first) + 1);
  return n;
}

// Where each of a model's tensors goes in `arch`'s checkpoint, by our full name ("blocks.0.qkv.weight"):
// one part per Hugging Face tensor, rows [row, row + rows) of ours (rows -1: all of it; a fused
// tensor's parts as its block's fused_splits() declare them) in `layout`; `hf_row` >= 0: the Hugging
// Face tensor is stacked from several of ours (HFLayout::Stacked) and this one starts at that row.
// Tensors the architecture has no place for are absent. hf-export and peft-export both map names
// through it.
struct HfPart {
  std::string hf_name;
  int64_t row = 0, rows = -1;
  HFLayout layout = HFLayout::Same;
  int64_t hf_row = -1;
};
std::map<std::string, std::vector<HfPart>> hf_parts(const LMModel& model, const HFArchitecture& arch);

// ---- what import and export share (hf_architectures.cpp) ----------------------------------------

// A JSON file of a Hugging Face folder, read under the JSON limits (read_file.h); errors name it.
nlohmann::json read_json(const std::filesystem::path& path);
// A tokenizer-related file copied whole: the small JSON sidecars under the JSON limit, the
// vocabularies and merges under the tokenizer files' (read_file.h).
void copy_atomically(const std::filesystem::path& from, const std::filesystem::path& to);
// "a, b, c" (with `sep`).
std::string joined(const std::vector<std::string>& items, const std::string& sep = ", ");
// Hugging Face layout -> ours, and back.
at::Tensor to_ours(const at::Tensor& t, HFLayout layout);
at::Tensor to_hf(const at::Tensor& t, HFLayout layout);

}  // namespace linearnexus::hf
