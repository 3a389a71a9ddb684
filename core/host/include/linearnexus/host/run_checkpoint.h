#pragma once
// A run's checkpoint: the one type that reads and writes a whole run, used by the training run (save,
// resume), the session (which checkpoint a run starts from), `sample` / `eval` (a model and its
// tokenizer) and the Hugging Face conversion. One safetensors file (safetensors.h) holding
//   model.<name>                the model's parameters and buffers
//   optim.<key>                 the optimizer's state_dict
//   extra.<group>.<name>        tensors a trainer trains beside the model (TrainingRun::add_trainable)
//   extra.<group>_optim.<key>   and their optimizer's state
//   rng.cpu, rng.cuda           the random generators' states (exact resumes)
// with metadata: format, step, config (the resolved experiment), tokenizer (Tokenizer::to_json),
// plugins (which plugin and version made each block). Files written before this type existed have
// the same layout and load as they are.
//
// Next to it: CheckpointManager (a run folder's step_XXXXXXXX files and latest.safetensors) and
// LoadedModel (a checkpoint's model ready to sample from).
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "linearnexus/host/safetensors.h"
#include "linearnexus/host/config.h"
#include "linearnexus/model.h"
#include "linearnexus/tokenizer.h"

namespace linearnexus {

class Optimizer;
class PluginHost;
class Registry;

class RunCheckpoint {
 public:
  // What a checkpoint of `model` (built by `registry`) records about it, at `step`.
  RunCheckpoint(const LMModel& model, const Registry& registry, const std::string& config_yaml,
                const Tokenizer& tokenizer, int64_t step);
  // The whole file (a run folder means its latest.safetensors), validated: the header, the metadata
  // a run needs (step, config, tokenizer), only tensors a run writes, finite optimizer and extra
  // tensors. Errors name the file. header_only: the header and metadata alone, no tensors (`validate`).
  static RunCheckpoint read(const std::string& run_dir_or_file, bool header_only = false);
  // The resolved experiment it holds (model.preset: init_from), without reading its tensors.
  static std::string read_config(const std::string& run_dir_or_file);

  const std::string& file() const { return file_; }  // "" until read or written
  int64_t step() const { return step_; }
  const std::string& config_yaml() const { return config_yaml_; }
  // A LoRA run's base (metadata "lora_base", JSON {"path", "sha256", "step"}): the checkpoint its
  // frozen weights came from, which the adapters are relative to; "" when not a LoRA run from one.
  const std::string& lora_base() const { return lora_base_json_; }
  void set_lora_base(const std::string& json) { lora_base_json_ = json; }
  // The tokenizer the checkpoint was trained with; its files are looked for beside the checkpoint.
  std::shared_ptr<Tokenizer> tokenizer() const;
  // The plugins that built its blocks must be loaded: a missing one is an Error naming the block,
  // the plugin, its version and the search path; another version a warning naming both.
  void check_plugins(const PluginHost& host) const;

  // ---- the parts --------------------------------------------------------------------------------
  void set_model(const LMModel& model);
  // Copies the model's tensors in: a missing tensor, a shape or dtype mismatch, a non-finite value
  // is an Error naming the tensor and the file.
  void load_model(LMModel& model) const;
  void set_optimizer(const Optimizer& optimizer, const std::string& group = "");
  // An optimizer's state (group "": the model's; else a trainable's), on `device`; a tensor of another
  // shape or dtype than the optimizer's own is an Error naming it (another optimizer or model config?).
  void load_optimizer(Optimizer& optimizer, const at::Device& device, const std::string& group = "") const;
  // A trainable group's tensors (TrainingRun::add_trainable).
  void set_extra(const std::string& group, const torch::nn::Module& tensors);
  bool has_extra(const std::string& group) const;
  void load_extra(const std::string& group, torch::nn::Module& tensors) const;
  // Every extra.* tensor belongs to one of `groups` (its tensors or its optimizer's): an Error names
  // the first that does not.
  void check_extra_groups(const std::vector<std::string>& groups) const;
  // The random generators: the CPU's, and `device`'s when it is a GPU. rng.cpu is required (an exact
  // resume needs it: an Error without); rng.cuda is used when there.
  void set_rng(const at::Device& device);
  void restore_rng(const at::Device& device) const;

  // Atomically (a temporary file, then a rename): a crash never leaves a half-written checkpoint.
  void write(const std::string& file);

 private:
  RunCheckpoint() = default;
  std::string file_;
  int64_t step_ = 0;
  std::string config_yaml_, tokenizer_json_, plugins_json_, lora_base_json_;
  TensorMap tensors_;  // every tensor of the file, under its full name
};

// step_XXXXXXXX.safetensors files plus a `latest.safetensors` hard link to the newest; keeps the
// last keep_last_n step files (0 = only latest).
class CheckpointManager {
 public:
  // create: make `dir` when missing (false: only look, as `validate` does).
  CheckpointManager(std::string dir, int64_t keep_last_n, bool create = true);
  // Writes `checkpoint` as its step's file (step_XXXXXXXX.safetensors) and makes it latest; returns the file.
  std::string save(RunCheckpoint& checkpoint);
  std::optional<std::string> latest() const;
  // The newest checkpoint that loads (trainer.resume: auto), read once: latest, else the step files
  // from the newest down, each one skipped with a warning. A corrupt latest is a hard link to the
  // newest step file, so the fallback is the step before it (keep_last_n >= 1 keeps one). nullopt
  // when there is no checkpoint; an Error when there are some but none loads.
  std::optional<RunCheckpoint> newest_loadable(bool header_only = false) const;
  // The step_XXXXXXXX files, newest first.
  std::vector<std::string> step_files() const;
  const std::string& dir() const { return dir_; }

 private:
  std::string dir_;
  int64_t keep_last_n_;
};

// A run folder or checkpoint file -> the checkpoint file (a folder means its latest.safetensors).
std::string resolve_checkpoint(const std::string& run_dir_or_file);

struct LoadedModel {
  Experiment experiment;
  std::shared_ptr<LMModel> model;
  std::shared_ptr<Tokenizer> tokenizer;
  std::string file;
};
// A run folder or checkpoint file -> the model it holds (eval mode) on `device`, its tokenizer and
// experiment (with `overrides`, "key.path=value" as --set, applied: `sample --max-tokens`). The
// checkpoint's plugins are checked (RunCheckpoint::check_plugins); its own plugins.paths are never
// loaded (a checkpoint is data): its blocks must be on the host's path.
LoadedModel load_model_from_checkpoint(const std::string& run_dir_or_file, PluginHost& host,
                                       const std::string& device = "cpu",
                                       const std::vector<std::string>& overrides = {});

// A module's parameters and buffers by name, with `prefix`.
TensorMap model_tensors(const torch::nn::Module& module, const std::string& prefix = "model.");
// Copy `prefix`-named tensors into the module; a missing tensor, a shape or dtype mismatch, a
// NaN/infinite value, or a tensor under `prefix` the module does not have throws Error naming the
// first such tensor (and both shapes) and `source`. The module's tensors whose names start with
// `optional` ("" = none) are loaded when the map has them and otherwise keep their values (LoRA
// adapters, starting from a checkpoint without them).
void load_model_tensors(torch::nn::Module& module, const TensorMap& tensors, const std::string& source,
                        const std::string& prefix = "model.", const std::string& optional = "");

}  // namespace linearnexus
