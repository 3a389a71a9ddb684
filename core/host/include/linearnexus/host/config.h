#pragma once
// Experiments: one YAML file, validated against the host's schemas and the plugins' schemas.
//
// Unknown keys, wrong types and malformed YAML throw Error naming the file, line and column (and
// the nearest valid key). Each host section is parsed once, here, into a typed struct that the rest
// of the host reads (the plugins' sections stay Params: each plugin reads its own). The resolved
// experiment (every default filled in) is kept as YAML text: it is written to out_dir/config.yaml and
// into every checkpoint, and re-parses to the same thing.
#include <map>
#include <string>
#include <vector>

#include "linearnexus/host/data.h"
#include "linearnexus/host/distributed.h"
#include "linearnexus/model.h"
#include "linearnexus/params.h"

namespace linearnexus {

class PluginHost;

// The top-level keys.
struct RunSettings {
  std::string name = "run";
  uint64_t seed = 1337;            // initialisation, data order, dropout and sampling
  std::string device = "auto";     // auto | cpu | cuda
  std::string precision = "fp32";  // fp32 | bf16
};

// schedule:
struct ScheduleSettings {
  int64_t warmup_steps = 100;
  std::string decay = "cosine";  // cosine | linear | constant
  double min_lr = 0;
};

// The trainer: section's keys every trainer takes (the trainer plugin's own stay in
// Experiment::trainer_params).
struct TrainerSettings {
  int64_t max_steps = 1000, stop_after = 0;
  double grad_clip = 1.0;
  int64_t log_every = 10, eval_every = 100;
  bool jsonl = true, tensorboard = false;  // trainer.trackers: metrics.jsonl, TensorBoard event files
  // trainer.activation_checkpointing as a block interval (LMModel::set_activation_checkpointing):
  // none -> 0, blocks -> 1, N -> N.
  int64_t activation_checkpoint_every = 0;
  double peak_tflops = 0;
  std::string out_dir;  // resolved: runs/<name> when the key is ""
  // Checkpoints: how often, how many, where a run starts from.
  int64_t save_every = 500, keep_last_n = 2;
  std::string resume;     // "" | auto | a checkpoint path
  std::string init_from;  // "" | a checkpoint path
};

// sample:
struct SampleSettings {
  std::string prompt = "\n";
  int64_t max_tokens = 200, num_samples = 1;
  double temperature = 0.8;
  int64_t top_k = 50;
  double top_p = 0.95;
  bool chat = false;  // prompt = a user message, rendered with the tokenizer's chat template
};

struct Experiment {
  std::string source;    // the file it came from (or "checkpoint:<path>")
  std::string base_dir;  // where relative paths resolve
  RunSettings run;
  std::vector<std::string> plugin_paths;
  DataSettings data;
  // model: with dims.vocab_size 0 for `auto` (the tokenizer's: model_config fills it in).
  ModelConfig model;
  std::string optimizer_name;
  Params optimizer;  // the optimizer plugin's keys
  ScheduleSettings schedule;
  std::string trainer_name;
  TrainerSettings trainer;
  Params trainer_params;  // the trainer plugin's own keys
  SampleSettings sample;
  DistributedSettings distributed;  // used when launched on several ranks
  std::string task_name;            // "" when the experiment has no task section
  Params task;                      // the task plugin's keys
  std::string resolved_yaml;

  // The model for a tokenizer of `tokenizer_vocab_size` ids (model.vocab_size: auto takes it).
  ModelConfig model_config(int64_t tokenizer_vocab_size) const;
};

// What plugins.paths does. Load: its folders are loaded into the host, relative entries resolving
// against `plugin_dir` (the experiment file's folder; "" = the working directory; entries given with
// --set resolve against the working directory). Ignore: a checkpoint's embedded experiment - a
// checkpoint is data, so the paths it lists stay in its text but nothing is loaded from them.
enum class PluginPaths { Load, Ignore };

// Load, apply --set overrides ("key.path=value", value parsed as YAML), load plugins.paths (relative
// to the file's folder) into `host`, then validate everything.
Experiment load_experiment(const std::string& path, const std::vector<std::string>& overrides, PluginHost& host);
// The same from YAML text (a checkpoint's config metadata: PluginPaths::Ignore).
Experiment parse_experiment(const std::string& yaml_text, const std::string& origin, const std::string& base_dir,
                            const std::vector<std::string>& overrides, PluginHost& host,
                            PluginPaths plugin_paths = PluginPaths::Load, const std::string& plugin_dir = "");

// What training needs beyond each key's own schema (data.seq_len <= model.max_seq_len, the
// trainer's own checks): `validate` and prepare_run both call it, so validate refuses what run does.
// Not part of parse_experiment: a model alone (a checkpoint's, a test's) does not need it.
void check_for_training(const Experiment& e, const Registry& registry);

// The host's own schemas, for docs and `linearnexus validate`.
const Schema& top_schema();
const Schema& plugins_schema();
const Schema& model_schema();
const Schema& schedule_schema();
const Schema& trainer_common_schema();
const Schema& sample_schema();

}  // namespace linearnexus
