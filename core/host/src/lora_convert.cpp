// convert merge-lora / peft-export (lora_convert.h).
#include "linearnexus/host/lora_convert.h"

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>

#include "hf_architectures.h"
#include "linearnexus/error.h"
#include "linearnexus/host/atomic_file.h"
#include "linearnexus/host/config.h"
#include "linearnexus/host/hf_convert.h"
#include "linearnexus/host/plugin_host.h"
#include "linearnexus/host/run_checkpoint.h"
#include "linearnexus/host/safetensors.h"
#include "linearnexus/lora.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace linearnexus {
namespace {

LoadedModel load_lora_run(const std::string& run, PluginHost& host, const char* command) {
  LoadedModel lm = load_model_from_checkpoint(run, host);
  if (!lm.model->lora())
    throw Error(std::string("convert ") + command + ": " + lm.file +
                " has no LoRA adapters (its model.lora.rank is 0); " +
                "a run without them exports with convert hf-export as it is");
  return lm;
}

// The folder a checkpoint file or run folder names.
fs::path run_folder(const std::string& run) {
  return fs::is_directory(run) ? fs::path(run) : fs::path(run).parent_path();
}

}  // namespace

std::string merge_lora(const std::string& run, const std::string& out_dir, PluginHost& host) {
  LoadedModel lm = load_lora_run(run, host, "merge-lora");
  const LoraAdapters& lora = *lm.model->lora();
  // The same experiment without adapters: its model, config.yaml and checkpoint are a plain run's.
  const Experiment plain = parse_experiment(lm.experiment.resolved_yaml, "checkpoint " + lm.file, "",
                                            {"model.lora.rank=0"}, host, PluginPaths::Ignore);
  LMModel merged(plain.model_config(lm.tokenizer->vocab_size()), host.registry());
  TensorMap tensors = model_tensors(*lm.model, "model.");
  for (const auto& [name, w] : lora.merged_weights()) tensors["model." + name] = w;
  // The adapters' own tensors are not the merged model's (load_model_tensors refuses strangers).
  for (auto it = tensors.lower_bound("model.lora."); it != tensors.end() && it->first.rfind("model.lora.", 0) == 0;)
    it = tensors.erase(it);
  load_model_tensors(merged, tensors, lm.file);

  // Written into a temporary folder renamed into place last, as hf-export does (atomic_file.h).
  StagedFolder staged(out_dir);
  const fs::path out(staged.dir());
  RunCheckpoint checkpoint(merged, host.registry(), plain.resolved_yaml, *lm.tokenizer, 0);
  CheckpointManager(out.string(), 0).save(checkpoint);
  write_file_atomically((out / "config.yaml").string(), plain.resolved_yaml);
  // The tokenizer's files travel in the same places: beside the checkpoints (an import) or in
  // tokenizer/ (a training run); the checkpoint names them relative to its folder (tokenizers.h).
  const fs::path from = run_folder(run);
  for (const auto& f : hf_tokenizer_files())
    if (fs::exists(from / f)) fs::copy_file(from / f, out / f);
  if (fs::is_directory(from / "tokenizer")) {
    fs::create_directories(out / "tokenizer");
    for (const auto& e : fs::directory_iterator(from / "tokenizer"))
      if (e.is_regular_file()) fs::copy_file(e.path(), out / "tokenizer" / e.path().filename());
  }
  json layers = json::array();
  for (const auto& s : lora.sites()) layers.push_back(s.name);
  // The base the adapters were trained on (RunCheckpoint::lora_base), when the run recorded one.
  const std::string base = RunCheckpoint::read(lm.file, true).lora_base();
  const json record = {{"source", fs::absolute(lm.file).lexically_normal().string()},
                       {"rank", lora.config().rank},
                       {"alpha", lora.config().alpha},
                       {"merged", layers},
                       {"base", base.empty() ? json(nullptr) : json::parse(base, nullptr, false)}};
  write_file_atomically((out / "lora_merge.json").string(), record.dump(2) + "\n");
  staged.commit();
  return "merged the LoRA adapters of " + lm.file + " (rank " + std::to_string(lora.config().rank) + ", " +
         std::to_string(lora.sites().size()) + " layers) into " + out_dir;
}

std::string peft_export(const std::string& run, const std::string& out_dir, PluginHost& host) {
  LoadedModel lm = load_lora_run(run, host, "peft-export");
  const LoraAdapters& lora = *lm.model->lora();
  const hf::Found found = hf::architecture_of(host.registry(), lm.model->config(), "checkpoint " + lm.file);
  const auto parts = hf::hf_parts(*lm.model, *found.architecture);
  TensorMap out;
  json targets = json::array();
  int transposed = -1;  // fan_in_fan_out: one value for every adapted module
  for (const auto& s : lora.sites()) {
    auto it = parts.find(s.name + ".weight");
    if (it == parts.end())
      throw Error("convert peft-export: the adapted layer " + s.name + " has no counterpart in " +
                  found.architecture->name + "; adapt only layers hf-export writes (model.lora.targets)");
    const at::Tensor A = s.A.detach().to(at::kCPU, at::kFloat).contiguous(), B = s.B.detach().to(at::kCPU, at::kFloat);
    for (const auto& part : it->second) {
      if (part.hf_row >= 0)
        throw Error("convert peft-export: " + s.name + " is only some rows of " + part.hf_name + " in " +
                    found.architecture->name + ", which PEFT adapts as one layer; leave it out of model.lora.targets");
      if (part.layout == HFLayout::Conv)
        throw Error("convert peft-export: " + s.name + " is a convolution in " + found.architecture->name +
                    "; PEFT's LoRA for it is not written");
      const int t = part.layout == HFLayout::Transposed ? 1 : 0;
      if (transposed >= 0 && transposed != t)
        throw Error("convert peft-export: " + found.architecture->name +
                    " mixes Linear and Conv1D layers among the adapted ones; " +
                    "PEFT takes one fan_in_fan_out: adapt one kind (model.lora.targets)");
      transposed = t;
      const std::string module = part.hf_name.substr(0, part.hf_name.rfind(".weight"));
      out["base_model.model." + module + ".lora_A.weight"] = A.clone();
      out["base_model.model." + module + ".lora_B.weight"] =
          (part.rows < 0 ? B : B.narrow(0, part.row, part.rows)).contiguous();
      targets.push_back(module);
    }
  }
  // The base: trainer.init_from, or the Hugging Face folder that run was imported from.
  std::string base = lm.experiment.trainer.init_from;
  if (!base.empty()) {
    std::ifstream record(run_folder(base) / "hf_import.json");
    if (record) {
      try {
        base = json::parse(record).value("source", base);
      } catch (const std::exception&) {
      }
    }
  }
  const json config = {{"peft_type", "LORA"},
                       {"task_type", "CAUSAL_LM"},
                       {"base_model_name_or_path", base},
                       {"r", lora.config().rank},
                       {"lora_alpha", lora.config().alpha},
                       {"lora_dropout", 0.0},
                       {"target_modules", targets},
                       {"fan_in_fan_out", transposed == 1},
                       {"bias", "none"},
                       {"use_rslora", false},
                       {"use_dora", false},
                       {"init_lora_weights", true},
                       {"inference_mode", true},
                       {"modules_to_save", nullptr},
                       {"layers_to_transform", nullptr},
                       {"rank_pattern", json::object()},
                       {"alpha_pattern", json::object()},
                       {"revision", nullptr}};
  StagedFolder staged(out_dir);
  save_safetensors((fs::path(staged.dir()) / "adapter_model.safetensors").string(), out, {{"format", "pt"}});
  write_file_atomically((fs::path(staged.dir()) / "adapter_config.json").string(), config.dump(2) + "\n");
  staged.commit();
  return "exported the LoRA adapters of " + lm.file + " for " + found.architecture->name + " to " + out_dir + ": " +
         std::to_string(targets.size()) + " modules, rank " + std::to_string(lora.config().rank);
}

}  // namespace linearnexus
