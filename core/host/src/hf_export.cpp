// `linearnexus convert hf-export` (see hf_convert.h): a run's tensors through its architecture's
// tensor table (hf_parts, also peft-export's), config.json and generation_config.json with the
// tokenizer's special ids, and the tokenizer's Hugging Face files, written into a staged folder.
#include <nlohmann/json.hpp>

#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "hf_architectures.h"
#include "linearnexus/error.h"
#include "linearnexus/host/atomic_file.h"
#include "linearnexus/host/hf_convert.h"
#include "linearnexus/host/plugin_host.h"
#include "linearnexus/host/read_file.h"
#include "linearnexus/host/run_checkpoint.h"
#include "linearnexus/host/safetensors.h"
#include "linearnexus/log.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace linearnexus {

using Architecture = HFArchitecture;
using hf::copy_atomically;
using hf::joined;
using hf::read_json;
using hf::to_hf;

namespace {

// The folders that may hold the run's Hugging Face tokenizer files, in order: the run folder itself
// (an import), then the folder its tokenizer was loaded from (a run keeps them in out_dir/tokenizer/).
std::vector<fs::path> tokenizer_folders(const LoadedModel& lm, const fs::path& run_dir) {
  std::vector<fs::path> candidates{run_dir};
  const json tok = json::parse(lm.tokenizer->to_json(), nullptr, false);
  for (const char* key : {"spec", "path", "dir"})
    if (tok.is_object() && tok.contains(key) && tok.at(key).is_string()) {
      // A relative path (a run keeps its tokenizer files in its folder) is the checkpoint folder's.
      fs::path p = tok.at(key).get<std::string>();
      if (p.is_relative()) p = fs::path(lm.file).parent_path() / p;
      candidates.push_back(fs::is_directory(p) ? p : p.parent_path());
    }
  return candidates;
}

void export_tokenizer(const LoadedModel& lm, const fs::path& run_dir, const fs::path& out,
                      std::vector<std::string>* written) {
  const std::vector<fs::path> candidates = tokenizer_folders(lm, run_dir);
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

// The special tokens' ids as transformers reads them (config.json, generation_config.json): the
// run tokenizer's bos and eos, and the pad token the exported tokenizer_config.json names (-1: none).
struct SpecialIds {
  int64_t bos = -1, eos = -1, pad = -1;
};
SpecialIds special_ids(const Tokenizer& tok, const fs::path& exported) {
  SpecialIds ids{tok.bos_id(), tok.eos_id(), -1};
  const fs::path cfg_path = exported / "tokenizer_config.json";
  if (!fs::exists(cfg_path)) return ids;
  const json cfg = read_json(cfg_path);
  if (!cfg.is_object() || !cfg.contains("pad_token")) return ids;
  const json& pad = cfg.at("pad_token");  // "<pad>" or {"content": "<pad>", ...}
  const json text = pad.is_object() && pad.contains("content") ? pad.at("content") : pad;
  if (!text.is_string() || text.get<std::string>().empty()) return ids;
  const auto encoded = tok.encode(text.get<std::string>());
  if (encoded.size() == 1) ids.pad = encoded[0];
  return ids;
}

// config.json's and generation_config.json's token ids; generation_config.json starts from the one
// the run kept from its import beside its tokenizer files (the model's own sampling defaults), if any.
void write_special_ids(const SpecialIds& ids, const std::vector<fs::path>& folders, const fs::path& out, json& config) {
  auto id_or_null = [](int64_t id) { return id < 0 ? json(nullptr) : json(id); };
  json generation = json::object();
  for (const auto& dir : folders)
    if (fs::exists(dir / "generation_config.json")) {
      const json kept = read_json(dir / "generation_config.json");
      if (kept.is_object()) generation = kept;
      break;
    }
  for (auto [key, id] : {std::pair<const char*, int64_t>{"bos_token_id", ids.bos},
                         {"eos_token_id", ids.eos},
                         {"pad_token_id", ids.pad}}) {
    config[key] = id_or_null(id);
    generation[key] = id_or_null(id);
  }
  write_file_atomically((out / "generation_config.json").string(), generation.dump(2) + "\n");
}

}  // namespace

namespace hf {
std::map<std::string, std::vector<HfPart>> hf_parts(const LMModel& model, const HFArchitecture& arch) {
  const ModelConfig& mc = model.config();
  const auto ours = model.named_parameters(), buffers = model.named_buffers();
  std::map<std::string, std::vector<HfPart>> out;
  const auto all = all_rules(arch);
  for (const auto& rule : all) {
    for (int64_t i : layers_of(rule, mc.dims.n_layer)) {
      const std::string name = at_layer(rule.ours, i);
      if (!ours.contains(name) && !buffers.contains(name)) continue;
      if (rule.layout ==
          HFLayout::Stacked) {  // rows after those of the stacked rules before it that name the same tensor
        int64_t hf_row = 0;
        for (const auto& before : all) {
          if (&before == &rule) break;
          const std::string other = at_layer(before.ours, i);
          if (before.layout == HFLayout::Stacked && before.hf == rule.hf && ours.contains(other))
            hf_row += ours[other].size(0);
        }
        out[name] = {{at_layer(rule.hf[0], i), 0, -1, rule.layout, hf_row}};
        continue;
      }
      if (rule.hf.size() == 1) {
        out[name] = {{at_layer(rule.hf[0], i), 0, -1, rule.layout}};
        continue;
      }
      // A fused tensor: split as its block declares its parts (qkv: the q, k and v rows).
      // Its split is declared under the weight's name (a bias splits as its weight); a bare parameter
      // ("conv_weight") under its own.
      std::string rel = name.substr(name.find('.', std::string("blocks.").size()) + 1);
      if (rel.rfind('.') != std::string::npos) rel = rel.substr(0, rel.rfind('.')) + ".weight";
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
  std::map<std::string, std::map<int64_t, at::Tensor>> stacks;  // a stacked tensor's pieces by first row
  for (const auto& [name, parts] : hf::hf_parts(*lm.model, arch)) {
    const at::Tensor t = ours.at(name).detach().to(at::kCPU, at::kFloat);
    for (const auto& part : parts) {
      auto piece = to_hf(part.rows < 0 ? t : t.narrow(0, part.row, part.rows).contiguous(), part.layout);
      if (part.hf_row >= 0)
        stacks[part.hf_name][part.hf_row] = piece;
      else
        out[part.hf_name] = piece;
    }
  }
  for (const auto& [hf_name, pieces] : stacks) {
    std::vector<at::Tensor> rows;
    for (const auto& kv : pieces) rows.push_back(kv.second);
    out[hf_name] = at::cat(rows, 0);
  }
  // Written into a temporary folder beside out_dir and renamed into place last: a killed or failed
  // export (full disk) never leaves a folder that looks finished (atomic_file.h).
  StagedFolder staged(out_dir);
  const fs::path out_path(staged.dir());
  save_safetensors((out_path / "model.safetensors").string(), out, {{"format", "pt"}});
  const fs::path run_folder = fs::is_directory(run_dir) ? fs::path(run_dir) : fs::path(run_dir).parent_path();
  std::vector<std::string> tokenizer_files;
  export_tokenizer(lm, run_folder, out_path, &tokenizer_files);
  json config = json::object();
  for (const auto& [key, value] : arch.config_json(mc, mc.block_params.at(found.block), ours))
    config[key] = json::parse(value);
  write_special_ids(special_ids(*lm.tokenizer, out_path), tokenizer_folders(lm, run_folder), out_path, config);
  write_file_atomically((out_path / "config.json").string(), config.dump(2) + "\n");
  staged.commit();
  return "exported " + lm.file + " as " + arch.name + " to " + out_dir +
         ": config.json, generation_config.json, model.safetensors (fp32, " + std::to_string(out.size()) + " tensors)" +
         (tokenizer_files.empty() ? "" : ", " + joined(tokenizer_files));
}

}  // namespace linearnexus
