#pragma once
// Experiments: one YAML file, validated against the host's schemas and the plugins' schemas.
//
// Unknown keys, wrong types and malformed YAML throw Error naming the file, line and column (and
// the nearest valid key). The resolved experiment (every default filled in) is kept as YAML text:
// it is written to out_dir/config.yaml and into every checkpoint, and re-parses to the same thing.
#include <map>
#include <string>
#include <vector>

#include "linearnexus/model.h"
#include "linearnexus/params.h"

namespace linearnexus {

class PluginHost;

struct Experiment {
  std::string source;  // the file it came from (or "checkpoint:<path>")
  std::string base_dir;  // where relative paths resolve
  Params top;          // name, seed, device, precision
  std::vector<std::string> plugin_paths;
  Params data;
  Params model;        // vocab_size, hidden_size, n_layer, max_seq_len, block_pattern, tie_embeddings, ...
  std::map<std::string, Params> blocks;  // per block kind used in block_pattern
  std::string optimizer_name;
  Params optimizer;
  Params schedule;
  std::string trainer_name;
  Params trainer;      // the host's common trainer keys + the trainer plugin's own
  Params sample;
  Params distributed;     // backend, timeout_sec, bucket_mb (used when launched on several ranks)
  std::string task_name;  // "" when the experiment has no task section
  Params task;            // the task plugin's keys
  std::string resolved_yaml;

  // Model config for a vocabulary size (model.vocab_size: auto takes it from the tokenizer).
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

// trainer.activation_checkpointing as a block interval (LMModel::set_activation_checkpointing):
// none -> 0, blocks -> 1, a positive integer N -> N; anything else an Error naming the key.
int64_t activation_checkpoint_every(const Experiment& e);

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

// Model presets (model.preset / --model): YAML text of model fields a file may override.
std::vector<std::string> preset_names();

}  // namespace linearnexus
