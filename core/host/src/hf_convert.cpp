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

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path.string() + ": cannot be read (does it exist?)");
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

json read_json(const fs::path& path) {
  try {
    return parse_json_limited(read_file(path), 16);
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    throw Error(path.string() + ": not readable JSON (" + e.what() + ")");
  }
}

void copy_atomically(const fs::path& from, const fs::path& to) {
  AtomicFile out(to.string());
  out.stream() << read_file(from);
  out.commit();
}

// OUT_DIR must be new or empty: a conversion never mixes its files with another run's.
void make_empty_folder(const std::string& dir) {
  std::error_code ec;
  if (fs::exists(dir) && !fs::is_empty(dir, ec))
    throw Error("'" + dir + "' is not empty; convert writes a new folder: name another one or remove it");
  fs::create_directories(dir, ec);
  if (ec) throw Error("cannot create '" + dir + "': " + ec.message());
}

// "a, b, c" (with `sep`).
std::string joined(const std::vector<std::string>& items, const std::string& sep = ", ") {
  std::string out;
  for (const auto& item : items) out += (out.empty() ? "" : sep) + item;
  return out;
}

// A rule's names for layer i ("{i}" replaced); model-level rules have no "{i}" and one instance.
std::string at_layer(std::string name, int64_t i) {
  const auto pos = name.find("{i}");
  if (pos != std::string::npos) name.replace(pos, 3, std::to_string(i));
  return name;
}
bool per_layer(const TensorRule& r) { return r.ours.find("{i}") != std::string::npos; }
// An architecture's whole table: the model's own rules, and the block's with "blocks.{i}." before
// its names (an adapter names its block's tensors relative to the block).
std::vector<TensorRule> all_rules(const Architecture& a) {
  std::vector<TensorRule> out = a.model_rules;
  for (auto r : a.layer_rules) {
    r.ours = "blocks.{i}." + r.ours;
    out.push_back(std::move(r));
  }
  return out;
}

// The model section an adapter wrote, as (key under model., YAML value) pairs -> a YAML map.
YAML::Node model_section(const HFFields& fields, const std::string& where) {
  YAML::Node model(YAML::NodeType::Map);
  for (const auto& [key, value] : fields) set_yaml_path(model, key, load_yaml_text(value, where + ": model." + key), where);
  return model;
}
std::vector<int64_t> layers_of(const TensorRule& r, int64_t n_layer) {
  std::vector<int64_t> out;
  for (int64_t i = 0; i < (per_layer(r) ? n_layer : 1); ++i) out.push_back(i);
  return out;
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

}  // namespace

std::string hf_import(const std::string& hf_dir_text, const std::string& out_dir, PluginHost& host,
                      const HfImportOptions& options) {
  const fs::path hf_dir(hf_dir_text), config_path = hf_dir / "config.json";
  if (!fs::is_directory(hf_dir)) throw Error("'" + hf_dir_text + "' is not a folder (a Hugging Face model folder)");
  const json config = read_json(config_path);
  if (!config.is_object()) throw Error(config_path.string() + ": not a JSON object");
  const hf::ConfigReader reader(config, config_path.string());
  std::string arch_name;
  if (config.contains("architectures") && config.at("architectures").is_array() && !config.at("architectures").empty() &&
      config.at("architectures")[0].is_string())
    arch_name = config.at("architectures")[0].get<std::string>();
  else
    throw Error(config_path.string() + ": no architectures list; expected e.g. \"architectures\": [\"LlamaForCausalLM\"] (" +
                hf::supported_names(host.registry()) + ")");
  const Architecture& arch = *hf::architecture_named(host.registry(), arch_name, config_path.string()).architecture;

  // The experiment of the imported run: its model section from config.json, as the block's adapter
  // maps it.
  YAML::Node experiment(YAML::NodeType::Map);
  experiment["name"] = fs::path(out_dir).filename().string();
  experiment["data"]["path"] = "";
  experiment["model"] = model_section(arch.model_section(reader), "hf-import of " + config_path.string());
  experiment["sample"]["num_samples"] = 1;
  YAML::Emitter text;
  text << experiment;
  Experiment exp = parse_experiment(text.c_str(), "hf-import of " + config_path.string(), "", {}, host, PluginPaths::Ignore);
  const int64_t vocab = exp.model.dims.vocab_size;

  std::set<std::string> dtypes;
  auto hf = read_hf_tensors(hf_dir, arch, &dtypes);
  make_empty_folder(out_dir);
  // A failed import leaves no half-made run folder behind (the folder was new or empty, and flat).
  struct RemoveUnlessDone {
    fs::path dir;
    bool done = false;
    ~RemoveUnlessDone() {
      if (done) return;
      std::error_code ec;
      for (const auto& e : fs::directory_iterator(dir, ec)) fs::remove(e.path(), ec);
      fs::remove(dir, ec);
    }
  } cleanup{out_dir};
  std::vector<std::string> tokenizer_files;
  auto tokenizer = import_tokenizer(hf_dir, out_dir, vocab, options, &tokenizer_files);
  LMModel model(exp.model_config(tokenizer->vocab_size()), host.registry());
  const TensorMap expected = model_tensors(model, "");
  const int64_t n_layer = model.config().dims.n_layer;

  TensorMap ours;
  std::set<std::string> used;
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
          throw Error(hf_dir_text + ": tensor '" + hf_name + "' is missing (" + arch.name + " with this config.json needs it for " +
                      name + "); is the download complete and config.json the model's own?");
        parts.push_back(to_ours(it->second.value.to(at::kFloat), rule.layout));
        sources += (sources.empty() ? "" : " + ") + ("'" + hf_name + "' " + c10::str(it->second.value.sizes()) + " in " + it->second.file);
        used.insert(hf_name);
      }
      at::Tensor t = parts.size() == 1 ? parts[0] : at::cat(parts, 0);
      if (t.sizes() != want->second.sizes())
        throw Error("tensor " + sources + " does not fit config.json: it makes " + name + " " + c10::str(t.sizes()) +
                    " where " + c10::str(want->second.sizes()) + " is expected");
      ours["model." + name] = t;
    }
  }
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

  RunCheckpoint checkpoint(model, host.registry(), exp.resolved_yaml, *tokenizer, 0);
  CheckpointManager(out_dir, 0).save(checkpoint);
  write_file_atomically((fs::path(out_dir) / "config.yaml").string(), exp.resolved_yaml);
  const json record = {{"source", fs::absolute(hf_dir).lexically_normal().string()},
                       {"architecture", arch.name},
                       {"source_dtypes", dtypes},
                       {"weights", "fp32"},
                       {"tokenizer_files", tokenizer_files},
                       {"tokenizer", tokenizer->kind()}};
  write_file_atomically((fs::path(out_dir) / "hf_import.json").string(), record.dump(2) + "\n");
  cleanup.done = true;
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
      const fs::path p = tok.at(key).get<std::string>();
      candidates.push_back(fs::is_directory(p) ? p : p.parent_path());
    }
  // A training run's own tokenizer.json is LinearNexus's ({"kind": ...}), not a Hugging Face one.
  auto is_hf_file = [](const fs::path& file) {
    if (file.filename() != "tokenizer.json") return file.filename() != "generation_config.json";
    const json j = json::parse(read_file(file), nullptr, false);
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
  make_empty_folder(out_dir);
  const fs::path out_path(out_dir);
  save_safetensors((out_path / "model.safetensors").string(), out, {{"format", "pt"}});
  json config = json::object();
  for (const auto& [key, value] : arch.config_json(mc, mc.block_params.at(found.block), ours)) config[key] = json::parse(value);
  write_file_atomically((out_path / "config.json").string(), config.dump(2) + "\n");
  std::vector<std::string> tokenizer_files;
  export_tokenizer(lm, fs::is_directory(run_dir) ? fs::path(run_dir) : fs::path(run_dir).parent_path(), out_path, &tokenizer_files);
  return "exported " + lm.file + " as " + arch.name + " to " + out_dir + ": config.json, model.safetensors (fp32, " +
         std::to_string(out.size()) + " tensors)" + (tokenizer_files.empty() ? "" : ", " + joined(tokenizer_files));
}

}  // namespace linearnexus
