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
  static const std::vector<std::string> files = {"tokenizer.json",        "tokenizer.model",         "tokenizer_config.json",
                                                 "special_tokens_map.json", "added_tokens.json",     "vocab.json",
                                                 "merges.txt",            "generation_config.json"};
  return files;
}

namespace {

using Architecture = HFArchitecture;
using Layout = HFLayout;
using TensorRule = HFTensorRule;
using hf::all_rules;
using hf::at_layer;
using hf::layers_of;

json read_json(const fs::path& path) {
  if (!fs::exists(path)) throw Error(path.string() + ": cannot be read (does it exist?)");
  try {
    return parse_json_limited(read_file(path.string(), file_kind::kJson), 16);
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    throw Error(path.string() + ": not readable JSON (" + e.what() + ")");
  }
}

// A tokenizer-related file copied whole: the small JSON sidecars under the JSON limit, the
// vocabularies and merges under the tokenizer files' (read_file.h).
void copy_atomically(const fs::path& from, const fs::path& to) {
  const std::string name = from.filename().string();
  const bool sidecar = name != "tokenizer.json" && name != "vocab.json" && from.extension() == ".json";
  AtomicFile out(to.string());
  out.stream() << read_file(from.string(), sidecar ? file_kind::kJson : file_kind::kTokenizer);
  out.commit();
}

// "a, b, c" (with `sep`).
std::string joined(const std::vector<std::string>& items, const std::string& sep = ", ") {
  std::string out;
  for (const auto& item : items) out += (out.empty() ? "" : sep) + item;
  return out;
}

// The model section an adapter wrote, as (key under model., YAML value) pairs -> a YAML map.
YAML::Node model_section(const HFFields& fields, const std::string& where) {
  YAML::Node model(YAML::NodeType::Map);
  for (const auto& [key, value] : fields) set_yaml_path(model, key, load_yaml_text(value, where + ": model." + key), where);
  return model;
}
// Hugging Face layout -> ours, and back.
at::Tensor to_ours(const at::Tensor& t, Layout layout) {
  if (layout == Layout::Transposed) return t.t().contiguous();
  if (layout == Layout::Conv) return t.dim() == 3 ? t.squeeze(1).contiguous() : t;
  return t;
}
at::Tensor to_hf(const at::Tensor& t, Layout layout) {
  if (layout == Layout::Transposed) return t.t().contiguous();
  if (layout == Layout::Conv) return t.unsqueeze(1).contiguous();
  return t;
}

// ---- reading a Hugging Face folder ------------------------------------------------------------

struct HfTensor {
  at::Tensor value;
  std::string file;
};

// Every tensor of the folder's safetensors file(s), named as the architecture names them (a base
// model saved alone, e.g. openai-community/gpt2's "h.0...", gets the base prefix).
std::map<std::string, HfTensor> read_hf_tensors(const fs::path& dir, const Architecture& arch, std::set<std::string>* dtypes) {
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
                (fs::exists(dir / "pytorch_model.bin") ? std::string(" (only pytorch_model.bin: convert reads safetensors; save "
                                                                      "the model with transformers' save_pretrained(safe_serialization=True))")
                                                        : std::string()));
  }
  std::map<std::string, HfTensor> out;
  for (const auto& f : files) {
    for (auto& [raw, t] : load_safetensors(f.string()).tensors) {
      std::string name = raw;
      if (name.rfind(arch.base_prefix, 0) != 0 && name != "lm_head.weight") name = arch.base_prefix + name;
      if (!at::isFloatingType(t.scalar_type()))
        throw Error(f.string() + ": tensor '" + raw + "' is " + c10::toString(t.scalar_type()) + ", not a floating-point weight");
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
  for (const auto& name : hf_tokenizer_files())
    if (fs::exists(hf_dir / name)) {
      copy_atomically(hf_dir / name, out / name);
      copied->push_back(name);
    }
  const std::string run = out.string();
  bool has_tokenizer = false;
  for (const auto& name : *copied) has_tokenizer |= name != "generation_config.json";
  if (!has_tokenizer)
    return make_ids_only_tokenizer(vocab_size, "the model in " + run + " was imported from " + hf_dir.string() +
                                                   ", which has no tokenizer files: pass token ids (eval --ids)");
  // GPT-2's slow tokenizer (vocab.json + merges.txt, no tokenizer.json) is GPT-2's own release under
  // other names (hf-export writes it so): the core's GPT-2 BPE reads it, given those names too.
  if (fs::exists(out / "vocab.json") && fs::exists(out / "merges.txt") && !fs::exists(out / "tokenizer.json") &&
      fs::exists(out / "tokenizer_config.json")) {
    const json cfg = read_json(out / "tokenizer_config.json");
    const std::string cls = cfg.is_object() && cfg.contains("tokenizer_class") && cfg.at("tokenizer_class").is_string()
                                ? cfg.at("tokenizer_class").get<std::string>() : "";
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
    return make_ids_only_tokenizer(vocab_size, "the tokenizer files in " + run + " are not read by this build (" + e.what() +
                                                   "); pass token ids (eval --ids)");
  }
}

// Before anything is built: the layers the weights hold by the architecture's per-layer names, and
// the embedding's shape, against what config.json made of the model (model.n_layer, vocab_size,
// hidden_size).
void check_config_fits_weights(const Architecture& arch, const Experiment& exp, const std::map<std::string, HfTensor>& hf,
                               const std::string& config_path) {
  const auto& d = exp.model.dims;
  const int64_t layers = hf::layers_in(arch, hf);
  if (layers != d.n_layer)
    throw Error(config_path + ": it gives the model " + std::to_string(d.n_layer) + " layers (model.n_layer), but the weights " +
                "hold " + std::to_string(layers) + "; config.json and the weights disagree: is config.json the model's own?");
  for (const auto& rule : arch.model_rules) {
    if (rule.ours != "wte.weight" || rule.hf.size() != 1) continue;
    auto it = hf.find(rule.hf[0]);
    if (it == hf.end()) continue;  // reported as missing, by name, when the tensors are gathered
    const auto shape = to_ours(it->second.value, rule.layout).sizes();
    if (shape.size() != 2 || shape[1] != d.hidden_size || (d.vocab_size > 0 && shape[0] != d.vocab_size))
      throw Error(it->second.file + ": tensor '" + rule.hf[0] + "' is " + c10::str(it->second.value.sizes()) + ", but " +
                  config_path + " gives vocab_size " + std::to_string(d.vocab_size) + " and hidden_size " +
                  std::to_string(d.hidden_size) + "; config.json and the weights disagree");
  }
}

// Our tensors from the Hugging Face ones by the architecture's table, for the tensors `expected`
// holds (a block's or a model's, by our names), each checked against its expected shape; the Hugging
// Face names used go to `used`.
TensorMap gather_tensors(const Architecture& arch, const TensorMap& expected, const std::map<std::string, HfTensor>& hf,
                         int64_t n_layer, const std::string& hf_dir, std::set<std::string>* used) {
  TensorMap ours;
  for (const auto& rule : all_rules(arch)) {
    for (int64_t i : layers_of(rule, n_layer)) {
      const std::string name = at_layer(rule.ours, i);
      auto want = expected.find(name);
      if (want == expected.end()) continue;  // an option this model does not have (a bias, an untied head)
      std::vector<at::Tensor> parts;
      std::string sources;
      for (const auto& pattern : rule.hf) {
        const std::string hf_name = at_layer(pattern, i);
        auto it = hf.find(hf_name);
        if (it == hf.end())
          throw Error(hf_dir + ": tensor '" + hf_name + "' is missing (" + arch.name + " with this config.json needs it for " +
                      name + "); is the download complete and config.json the model's own?");
        parts.push_back(to_ours(it->second.value.to(at::kFloat), rule.layout));
        sources += (sources.empty() ? "" : " + ") + ("'" + hf_name + "' " + c10::str(it->second.value.sizes()) + " in " + it->second.file);
        used->insert(hf_name);
      }
      // Parts stacked into one tensor (q, k, v) must agree past their first dimension; checked here so
      // that a shape lie is named, not a bare LibTorch "Sizes of tensors must match".
      bool fit = true;
      for (const auto& part : parts) fit = fit && part.dim() == parts[0].dim() && part.sizes().slice(1) == parts[0].sizes().slice(1);
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
    config = parse_json_limited(config_text, 16);
  } catch (const std::exception& e) {
    throw Error(config_path + ": not readable JSON (" + e.what() + ")");
  }
  if (!config.is_object()) throw Error(config_path + ": not a JSON object");
  const hf::ConfigReader reader(config, config_path);
  std::string arch_name;
  if (config.contains("architectures") && config.at("architectures").is_array() && !config.at("architectures").empty() &&
      config.at("architectures")[0].is_string())
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
      throw Error(t.file + ": tensor 'lm_head.weight' differs from the embeddings, but config.json says tie_word_embeddings: "
                  "true; fix config.json (false) or the weights");
    }
    throw Error(t.file + ": tensor '" + name + "' is not part of " + arch.name + " as config.json describes it (" +
                "a bias, layer or head the config turns off?); check config.json against the weights");
  }
  load_model_tensors(model, ours, hf_dir_text);  // every tensor present, fitting and finite

  // The checkpoint names its tokenizer files relative to the folder (they are in it), so the folder
  // reads its own files wherever it is moved or copied.
  RunCheckpoint checkpoint(model, host.registry(), exp.resolved_yaml, *keep_tokenizer_files(tokenizer, out.string(), ""), 0);
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
  return "imported " + arch.name + " from " + hf_dir_text + " into " + out_dir + ": " + std::to_string(model.num_parameters()) +
         " parameters (" + joined({dtypes.begin(), dtypes.end()}, "/") + " -> fp32), " + std::to_string(n_layer) +
         " layers, tokenizer " + tokenizer->kind() +
         (tokenizer_files.empty() ? std::string() : " (files kept: " + joined(tokenizer_files) + ")");
}

// ---- export -----------------------------------------------------------------------------------

namespace {

// The folder holding the run's tokenizer files: the run folder itself (an import), else the folder
// its tokenizer was loaded from (a run started with init_from an import keeps the path there).
void export_tokenizer(const LoadedModel& lm, const fs::path& run_dir, const fs::path& out, std::vector<std::string>* written) {
  std::vector<fs::path> candidates{run_dir};
  const json tok = json::parse(lm.tokenizer->to_json(), nullptr, false);
  for (const char* key : {"spec", "path", "dir"})
    if (tok.is_object() && tok.contains(key) && tok.at(key).is_string()) {
      // A relative path (a run keeps its tokenizer files in its folder) is the checkpoint folder's.
      fs::path p = tok.at(key).get<std::string>();
      if (p.is_relative()) p = fs::path(lm.file).parent_path() / p;
      candidates.push_back(fs::is_directory(p) ? p : p.parent_path());
    }
  // A training run's own tokenizer.json is LinearNexus's ({"kind": ...}), not a Hugging Face one.
  auto is_hf_file = [](const fs::path& file) {
    if (file.filename() != "tokenizer.json") return file.filename() != "generation_config.json";
    const json j = json::parse(read_file(file.string(), file_kind::kTokenizer), nullptr, false);
    return j.is_object() && j.contains("model");
  };
  for (const auto& dir : candidates) {
    for (const auto& name : hf_tokenizer_files())
      if (fs::exists(dir / name) && is_hf_file(dir / name)) {
        copy_atomically(dir / name, out / name);
        written->push_back(name);
      }
    if (!written->empty()) return;
  }
  // GPT-2's own release files are the Hugging Face slow tokenizer's, renamed.
  for (const auto& dir : candidates)
    if (lm.tokenizer->kind() == "gpt2" && fs::exists(dir / "encoder.json") && fs::exists(dir / "vocab.bpe")) {
      copy_atomically(dir / "encoder.json", out / "vocab.json");
      copy_atomically(dir / "vocab.bpe", out / "merges.txt");
      const json cfg = {{"tokenizer_class", "GPT2Tokenizer"},
                        {"model_max_length", lm.model->config().dims.max_seq_len},
                        {"bos_token", "<|endoftext|>"},
                        {"eos_token", "<|endoftext|>"},
                        {"unk_token", "<|endoftext|>"}};
      write_file_atomically((out / "tokenizer_config.json").string(), cfg.dump(2) + "\n");
      *written = {"vocab.json", "merges.txt", "tokenizer_config.json"};
      return;
    }
  log_warn("hf-export: the run's " + lm.tokenizer->kind() + " tokenizer has no Hugging Face files; " + out.string() +
           " holds the model alone (AutoModelForCausalLM loads it, AutoTokenizer does not)");
}

}  // namespace

namespace hf {
std::map<std::string, std::vector<HfPart>> hf_parts(const LMModel& model, const HFArchitecture& arch) {
  const ModelConfig& mc = model.config();
  const auto ours = model.named_parameters(), buffers = model.named_buffers();
  std::map<std::string, std::vector<HfPart>> out;
  for (const auto& rule : all_rules(arch)) {
    for (int64_t i : layers_of(rule, mc.dims.n_layer)) {
      const std::string name = at_layer(rule.ours, i);
      if (!ours.contains(name) && !buffers.contains(name)) continue;
      if (rule.hf.size() == 1) {
        out[name] = {{at_layer(rule.hf[0], i), 0, -1, rule.layout}};
        continue;
      }
      // A fused tensor: split as its block declares its parts (qkv: the q, k and v rows).
      std::string rel = name.substr(name.find('.', std::string("blocks.").size()) + 1);
      rel = rel.substr(0, rel.rfind('.')) + ".weight";
      const auto splits = model.blocks()[i]->fused_splits();
      if (!splits.count(rel) || splits.at(rel).size() != rule.hf.size())
        throw Error("hf-export: block " + std::to_string(i) + " declares no " + std::to_string(rule.hf.size()) +
                    "-part split of " + rel + " (its fused_splits())");
      int64_t row = 0;
      for (size_t k = 0; k < rule.hf.size(); ++k) {
        out[name].push_back({at_layer(rule.hf[k], i), row, splits.at(rel)[k], rule.layout});
        row += splits.at(rel)[k];
      }
    }
  }
  return out;
}
}  // namespace hf

std::string hf_export(const std::string& run_dir, const std::string& out_dir, PluginHost& host) {
  LoadedModel lm = load_model_from_checkpoint(run_dir, host);
  const ModelConfig& mc = lm.model->config();
  const hf::Found found = hf::architecture_of(host.registry(), mc, "checkpoint " + lm.file);
  const Architecture& arch = *found.architecture;
  TensorMap ours = model_tensors(*lm.model, "");
  // A run with LoRA adapters exports what it computes: every adapted weight merged (W0 + scale B A).
  // `convert peft-export` writes the adapters alone.
  if (const auto& lora = lm.model->lora())
    for (const auto& [name, w] : lora->merged_weights()) ours[name] = w;
  TensorMap out;
  for (const auto& [name, parts] : hf::hf_parts(*lm.model, arch)) {
    const at::Tensor t = ours.at(name).detach().to(at::kCPU, at::kFloat);
    for (const auto& part : parts)
      out[part.hf_name] = to_hf(part.rows < 0 ? t : t.narrow(0, part.row, part.rows).contiguous(), part.layout);
  }
  // Written into a temporary folder beside out_dir and renamed into place last: a killed or failed
  // export (full disk) never leaves a folder that looks finished (atomic_file.h).
  StagedFolder staged(out_dir);
  const fs::path out_path(staged.dir());
  save_safetensors((out_path / "model.safetensors").string(), out, {{"format", "pt"}});
  json config = json::object();
  for (const auto& [key, value] : arch.config_json(mc, mc.block_params.at(found.block), ours)) config[key] = json::parse(value);
  write_file_atomically((out_path / "config.json").string(), config.dump(2) + "\n");
  std::vector<std::string> tokenizer_files;
  export_tokenizer(lm, fs::is_directory(run_dir) ? fs::path(run_dir) : fs::path(run_dir).parent_path(), out_path, &tokenizer_files);
  staged.commit();
  return "exported " + lm.file + " as " + arch.name + " to " + out_dir + ": config.json, model.safetensors (fp32, " +
         std::to_string(out.size()) + " tensors)" + (tokenizer_files.empty() ? "" : ", " + joined(tokenizer_files));
}

}  // namespace linearnexus
