// `linearnexus convert hf-import / hf-export` (see hf_convert.h): reading a Hugging Face folder
// (config.json, one or several safetensors files, tokenizer files), running an architecture's tensor
// table (hf_architectures.cpp) in either direction, and writing a run folder or a Hugging Face folder.
#include "linearnexus/host/hf_convert.h"

#include <nlohmann/json.hpp>
#include <yaml-cpp/yaml.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "hf_architectures.h"
#include "json_limits.h"
#include "yaml_params.h"
#include "linearnexus/host/atomic_file.h"
#include "linearnexus/error.h"
#include "linearnexus/host/config.h"
#include "linearnexus/host/plugin_host.h"
#include "linearnexus/host/preflight.h"
#include "linearnexus/host/read_file.h"
#include "linearnexus/host/run_checkpoint.h"
#include "linearnexus/host/safetensors.h"
#include "linearnexus/host/tokenizers.h"
#include "linearnexus/log.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace linearnexus {

const std::vector<std::string>& hf_tokenizer_files() {
  static const std::vector<std::string> files = {
      "tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
      "vocab.json",     "merges.txt",      "generation_config.json"};
  return files;
}

namespace {

using Architecture = HFArchitecture;
using Layout = HFLayout;
using TensorRule = HFTensorRule;
using hf::all_rules;
using hf::at_layer;
using hf::copy_atomically;
using hf::joined;
using hf::layers_of;
using hf::read_json;
using hf::to_ours;

// The model section an adapter wrote, as (key under model., YAML value) pairs -> a YAML map.
YAML::Node model_section(const HFFields& fields, const std::string& where) {
  YAML::Node model(YAML::NodeType::Map);
  for (const auto& [key, value] : fields)
    set_yaml_path(model, key, load_yaml_text(value, where + ": model." + key), where);
  return model;
}
// ---- reading a Hugging Face folder ------------------------------------------------------------

struct HfTensor {
  at::Tensor value;
  std::string file;
};

// Every tensor of the folder's safetensors file(s), named as the architecture names them (a base
// model saved alone, e.g. openai-community/gpt2's "h.0...", gets the base prefix).
std::map<std::string, HfTensor> read_hf_tensors(const fs::path& dir, const Architecture& arch,
                                                std::set<std::string>* dtypes) {
  std::vector<fs::path> files;
  const fs::path single = dir / "model.safetensors", index = dir / "model.safetensors.index.json";
  if (fs::exists(index)) {
    const json j = read_json(index);
    if (!j.contains("weight_map") || !j.at("weight_map").is_object())
      throw Error(index.string() + ": no weight_map object; the index is corrupt");
    std::set<std::string> shards;
    for (const auto& [name, file] : j.at("weight_map").items()) {
      if (!file.is_string() || file.get<std::string>().find('/') != std::string::npos)
        throw Error(index.string() + ": weight_map entry for tensor '" + name + "' is not a file name in the folder");
      shards.insert(file.get<std::string>());
    }
    for (const auto& s : shards) {
      if (!fs::exists(dir / s))
        throw Error(index.string() + ": shard '" + s + "' is missing from " + dir.string() +
                    "; download every file the index lists");
      files.push_back(dir / s);
    }
  } else if (fs::exists(single)) {
    files.push_back(single);
  } else {
    throw Error(dir.string() + ": no model.safetensors or model.safetensors.index.json" +
                (fs::exists(dir / "pytorch_model.bin")
                     ? std::string(" (only pytorch_model.bin: convert reads safetensors; save "
                                   "the model with transformers' save_pretrained(safe_serialization=True))")
                     : std::string()));
  }
  std::map<std::string, HfTensor> out;
  for (const auto& f : files) {
    for (auto& [raw, t] : load_safetensors(f.string()).tensors) {
      std::string name = raw;
      if (name.rfind(arch.base_prefix, 0) != 0 && name != "lm_head.weight") name = arch.base_prefix + name;
      if (!at::isFloatingType(t.scalar_type()))
        throw Error(f.string() + ": tensor '" + raw + "' is " + c10::toString(t.scalar_type()) +
                    ", not a floating-point weight");
      if (out.count(name)) throw Error(f.string() + ": tensor '" + raw + "' is also in " + out.at(name).file);
      dtypes->insert(c10::toString(t.scalar_type()));
      out[name] = {t, f.string()};
    }
  }
  return out;
}

// Hugging Face tokenizer files -> the run's tokenizer. Copies the files into the run folder, then
// asks the tokenizer factory for the folder's tokenizer (tokenizer.json, else tokenizer.model, else
// GPT-2's encoder.json + vocab.bpe).
std::shared_ptr<Tokenizer> import_tokenizer(const fs::path& hf_dir, const fs::path& out, int64_t vocab_size,
                                            const HfImportOptions& options, std::vector<std::string>* copied) {
  // generation_config.json is the model's; the tokenizer's files come from --tokenizer DIR if given.
  const fs::path tok_dir = options.tokenizer_dir.empty() ? hf_dir : fs::path(options.tokenizer_dir);
  if (!options.tokenizer_dir.empty() && !fs::is_directory(tok_dir))
    throw Error("--tokenizer " + options.tokenizer_dir +
                ": not a folder (name the folder holding tokenizer.json or tokenizer.model)");
  for (const auto& name : hf_tokenizer_files()) {
    const fs::path from = (name == "generation_config.json" ? hf_dir : tok_dir) / name;
    if (fs::exists(from)) {
      copy_atomically(from, out / name);
      copied->push_back(name);
    }
  }
  const std::string run = out.string();
  bool has_tokenizer = false;
  for (const auto& name : *copied) has_tokenizer |= name != "generation_config.json";
  if (!has_tokenizer && !options.tokenizer_dir.empty())
    throw Error("--tokenizer " + options.tokenizer_dir + ": the folder has no tokenizer files (tokenizer.json, " +
                "tokenizer.model, or vocab.json + merges.txt); name the folder the model's tokenizer came in");
  if (!has_tokenizer) {
    const std::string attach = "convert hf-import " + hf_dir.string() + " NEW_RUN --tokenizer DIR (a folder with the " +
                               "model's tokenizer.json or tokenizer.model)";
    log_warn(hf_dir.string() +
             " has no tokenizer files: the run reads token ids only (eval --ids); to train or sample " +
             "on text, import it again with " + attach);
    return make_ids_only_tokenizer(vocab_size, "the model in " + run + " was imported from " + hf_dir.string() +
                                                   ", which has no tokenizer files: import it again with " + attach +
                                                   ", or pass token ids (eval --ids)");
  }
  // GPT-2's slow tokenizer (vocab.json + merges.txt, no tokenizer.json) is GPT-2's own release under
  // other names (hf-export writes it so): the core's GPT-2 BPE reads it, given those names too.
  if (fs::exists(out / "vocab.json") && fs::exists(out / "merges.txt") && !fs::exists(out / "tokenizer.json") &&
      fs::exists(out / "tokenizer_config.json")) {
    const json cfg = read_json(out / "tokenizer_config.json");
    const std::string cls = cfg.is_object() && cfg.contains("tokenizer_class") && cfg.at("tokenizer_class").is_string()
                                ? cfg.at("tokenizer_class").get<std::string>()
                                : "";
    if (cls == "GPT2Tokenizer" || cls == "GPT2TokenizerFast") {
      copy_atomically(out / "vocab.json", out / "encoder.json");
      copy_atomically(out / "merges.txt", out / "vocab.bpe");
    }
  }
  try {
    return load_tokenizer(run);
  } catch (const Error& e) {
    if (options.tokenizer)
      throw Error(hf_dir.string() + ": its tokenizer (" + (*copied)[0] + ") is not one this build reads (" + e.what() +
                  "); import the weights alone with --no-tokenizer (token ids then work: eval --ids)");
    return make_ids_only_tokenizer(vocab_size, "the tokenizer files in " + run + " are not read by this build (" +
                                                   e.what() + "); pass token ids (eval --ids)");
  }
}

// Before anything is built: the layers the weights hold by the architecture's per-layer names, and
// the embedding's shape, against what config.json made of the model (model.n_layer, vocab_size,
// hidden_size).
void check_config_fits_weights(const Architecture& arch, const Experiment& exp,
                               const std::map<std::string, HfTensor>& hf, const std::string& config_path) {
  const auto& d = exp.model.dims;
  const int64_t layers = hf::layers_in(arch, hf);
  if (layers != d.n_layer)
    throw Error(config_path + ": it gives the model " + std::to_string(d.n_layer) +
                " layers (model.n_layer), but the weights " + "hold " + std::to_string(layers) +
                "; config.json and the weights disagree: is config.json the model's own?");
  for (const auto& rule : arch.model_rules) {
    if (rule.ours != "wte.weight" || rule.hf.size() != 1) continue;
    auto it = hf.find(rule.hf[0]);
    if (it == hf.end()) continue;  // reported as missing, by name, when the tensors are gathered
    const auto shape = to_ours(it->second.value, rule.layout).sizes();
    if (shape.size() != 2 || shape[1] != d.hidden_size || (d.vocab_size > 0 && shape[0] != d.vocab_size))
      throw Error(it->second.file + ": tensor '" + rule.hf[0] + "' is " + c10::str(it->second.value.sizes()) +
                  ", but " + config_path + " gives vocab_size " + std::to_string(d.vocab_size) + " and hidden_size " +
                  std::to_string(d.hidden_size) + "; config.json and the weights disagree");
  }
}

// Our tensor of a stacked rule (HFLayout::Stacked) at layer i: its rows of the Hugging Face tensor,
// after those of the stacked rules before it that name the same one; the Hugging Face tensor must have
// exactly the rows of all of them.
at::Tensor stacked_part(const std::vector<HFTensorRule>& all, const HFTensorRule& rule, int64_t i,
                        const TensorMap& expected, const std::map<std::string, HfTensor>& hf, const std::string& hf_dir,
                        std::set<std::string>* used) {
  const std::string hf_name = at_layer(rule.hf.at(0), i), name = at_layer(rule.ours, i);
  int64_t row = -1, total = 0;
  std::string names;
  for (const auto& other : all) {
    if (other.layout != HFLayout::Stacked || other.hf != rule.hf) continue;
    auto part = expected.find(at_layer(other.ours, i));
    if (part == expected.end()) continue;
    if (&other == &rule) row = total;
    total += part->second.size(0);
    names += (names.empty() ? "" : " + ") + part->first + " " + c10::str(part->second.sizes());
  }
  auto it = hf.find(hf_name);
  if (it == hf.end())
    throw Error(hf_dir + ": tensor '" + hf_name + "' is missing (" + name +
                " needs it); is the download complete and config.json the model's own?");
  const at::Tensor& t = it->second.value;
  const at::Tensor& want = expected.at(name);
  if (t.dim() != want.dim() || t.size(0) != total || t.sizes().slice(1) != want.sizes().slice(1))
    throw Error("tensor '" + hf_name + "' " + c10::str(t.sizes()) + " in " + it->second.file +
                " does not fit config.json: it should stack " + names);
  used->insert(hf_name);
  return to_ours(t.to(at::kFloat).narrow(0, row, want.size(0)).contiguous(), rule.layout);
}

// Our tensors from the Hugging Face ones by the architecture's table, for the tensors `expected`
// holds (a block's or a model's, by our names), each checked against its expected shape; the Hugging
// Face names used go to `used`.
TensorMap gather_tensors(const Architecture& arch, const TensorMap& expected, const std::map<std::string, HfTensor>& hf,
                         int64_t n_layer, const std::string& hf_dir, std::set<std::string>* used) {
  TensorMap ours;
  const auto all = all_rules(arch);
  for (const auto& rule : all) {
    for (int64_t i : layers_of(rule, n_layer)) {
      const std::string name = at_layer(rule.ours, i);
      auto want = expected.find(name);
      if (want == expected.end()) continue;  // an option this model does not have (a bias, an untied head)
      if (rule.layout == HFLayout::Stacked) {
        ours["model." + name] = stacked_part(all, rule, i, expected, hf, hf_dir, used);
        continue;
      }
      std::vector<at::Tensor> parts;
      std::string sources;
      for (const auto& pattern : rule.hf) {
        const std::string hf_name = at_layer(pattern, i);
        auto it = hf.find(hf_name);
        if (it == hf.end())
          throw Error(hf_dir + ": tensor '" + hf_name + "' is missing (" + arch.name +
                      " with this config.json needs it for " + name +
                      "); is the download complete and config.json the model's own?");
        parts.push_back(to_ours(it->second.value.to(at::kFloat), rule.layout));
        sources += (sources.empty() ? "" : " + ") +
                   ("'" + hf_name + "' " + c10::str(it->second.value.sizes()) + " in " + it->second.file);
        used->insert(hf_name);
      }
      // Parts stacked into one tensor (q, k, v) must agree past their first dimension; checked here so
      // that a shape lie is named, not a bare LibTorch "Sizes of tensors must match".
      bool fit = true;
      for (const auto& part : parts)
        fit = fit && part.dim() == parts[0].dim() && part.sizes().slice(1) == parts[0].sizes().slice(1);
      if (!fit || (parts.size() == 1 ? parts[0] : at::cat(parts, 0)).sizes() != want->second.sizes())
        throw Error("tensor " + sources + " does not fit config.json: " + name + " " + c10::str(want->second.sizes()) +
                    " is expected" + (fit ? "" : " (the parts differ past their first dimension)"));
      ours["model." + name] = parts.size() == 1 ? parts[0] : at::cat(parts, 0);
    }
  }
  return ours;
}

}  // namespace

Experiment hf_config_experiment(const std::string& config_text, const std::string& config_path, const std::string& name,
                                PluginHost& host, const HFArchitecture** architecture) {
  json config;
  try {
    config = parse_json_limited(python_json_floats(config_text), 16);
  } catch (const std::exception& e) {
    throw Error(config_path + ": not readable JSON (" + e.what() + ")");
  }
  if (!config.is_object()) throw Error(config_path + ": not a JSON object");
  const hf::ConfigReader reader(config, config_path);
  std::string arch_name;
  if (config.contains("architectures") && config.at("architectures").is_array() &&
      !config.at("architectures").empty() && config.at("architectures")[0].is_string())
    arch_name = config.at("architectures")[0].get<std::string>();
  else
    throw Error(config_path + ": no architectures list; expected e.g. \"architectures\": [\"LlamaForCausalLM\"] (" +
                hf::supported_names(host.registry()) + ")");
  const Architecture& arch = *hf::architecture_named(host.registry(), arch_name, config_path).architecture;
  if (architecture) *architecture = &arch;
  // The experiment of the imported run: its model section from config.json, as the block's adapter
  // maps it.
  YAML::Node experiment(YAML::NodeType::Map);
  experiment["name"] = name;
  experiment["data"]["path"] = "";
  experiment["model"] = model_section(arch.model_section(reader), "hf-import of " + config_path);
  experiment["sample"]["num_samples"] = 1;
  YAML::Emitter text;
  text << experiment;
  return parse_experiment(text.c_str(), "hf-import of " + config_path, "", {}, host, PluginPaths::Ignore);
}

std::string hf_import(const std::string& hf_dir_text, const std::string& out_dir, PluginHost& host,
                      const HfImportOptions& options) {
  const fs::path hf_dir(hf_dir_text), config_path = hf_dir / "config.json";
  if (!fs::is_directory(hf_dir)) throw Error("'" + hf_dir_text + "' is not a folder (a Hugging Face model folder)");
  if (!fs::exists(config_path)) throw Error(config_path.string() + ": cannot be read (does it exist?)");
  const Architecture* arch_ptr = nullptr;
  const Experiment exp = hf_config_experiment(read_file(config_path.string(), file_kind::kJson), config_path.string(),
                                              fs::path(out_dir).filename().string(), host, &arch_ptr);
  const Architecture& arch = *arch_ptr;
  const int64_t vocab = exp.model.dims.vocab_size;

  std::set<std::string> dtypes;
  auto hf = read_hf_tensors(hf_dir, arch, &dtypes);
  // Nothing is built before config.json agrees with the weights present: a config that asks for
  // 100000 layers, or a width the files do not have, would otherwise allocate its model first.
  check_config_fits_weights(arch, exp, hf, config_path.string());
  StagedFolder staged(out_dir);  // a failed or killed import leaves no folder that looks complete
  const fs::path out(staged.dir());
  std::vector<std::string> tokenizer_files;
  auto tokenizer = import_tokenizer(hf_dir, out, vocab, options, &tokenizer_files);
  const ModelConfig model_config = exp.model_config(tokenizer->vocab_size());
  const int64_t n_layer = model_config.dims.n_layer;
  std::set<std::string> used;
  {
    // One layer of each kind first, against its weights: block parameters config.json gets wrong
    // (intermediate_size, heads) are found at the cost of a layer, not of the whole model.
    const auto kinds = model_config.layer_kinds();
    for (size_t i = 0; i < kinds.size() && i < 1; ++i) {
      auto block = build_block(host.registry(), model_config, static_cast<int64_t>(i), config_path.string());
      gather_tensors(arch, model_tensors(*block, "blocks." + std::to_string(i) + "."), hf, 1, hf_dir_text, &used);
    }
    used.clear();
  }
  const auto model_ptr = build_model(model_config, host.registry(), config_path.string());
  LMModel& model = *model_ptr;
  const TensorMap ours = gather_tensors(arch, model_tensors(model, ""), hf, n_layer, hf_dir_text, &used);
  const bool tied = model.config().tie_embeddings;
  for (const auto& [name, t] : hf) {
    if (used.count(name)) continue;
    bool ignored = false;
    for (const auto& pattern : arch.ignored)
      for (int64_t i = 0; i < n_layer; ++i) ignored |= at_layer(pattern, i) == name;
    if (ignored) continue;
    // A tied model's head is the embedding; a copy saved beside it must be that.
    if (name == "lm_head.weight" && tied) {
      if (t.value.to(at::kFloat).equal(ours.at("model.wte.weight"))) continue;
      throw Error(t.file +
                  ": tensor 'lm_head.weight' differs from the embeddings, but config.json says tie_word_embeddings: "
                  "true; fix config.json (false) or the weights");
    }
    throw Error(t.file + ": tensor '" + name + "' is not part of " + arch.name + " as config.json describes it (" +
                "a bias, layer or head the config turns off?); check config.json against the weights");
  }
  load_model_tensors(model, ours, hf_dir_text);  // every tensor present, fitting and finite

  // The checkpoint names its tokenizer files relative to the folder (they are in it), so the folder
  // reads its own files wherever it is moved or copied.
  RunCheckpoint checkpoint(model, host.registry(), exp.resolved_yaml,
                           *keep_tokenizer_files(tokenizer, out.string(), ""), 0);
  CheckpointManager(out.string(), 0).save(checkpoint);
  write_file_atomically((out / "config.yaml").string(), exp.resolved_yaml);
  const json record = {{"source", fs::absolute(hf_dir).lexically_normal().string()},
                       {"architecture", arch.name},
                       {"source_dtypes", dtypes},
                       {"weights", "fp32"},
                       {"tokenizer_files", tokenizer_files},
                       {"tokenizer", tokenizer->kind()}};
  write_file_atomically((out / "hf_import.json").string(), record.dump(2) + "\n");
  staged.commit();
  return "imported " + arch.name + " from " + hf_dir_text + " into " + out_dir + ": " +
         std::to_string(model.num_parameters()) + " parameters (" + joined({dtypes.begin(), dtypes.end()}, "/") +
         " -> fp32), " + std::to_string(n_layer) + " layers, tokenizer " + tokenizer->kind() +
         (tokenizer_files.empty() ? std::string() : " (files kept: " + joined(tokenizer_files) + ")");
}

}  // namespace linearnexus
