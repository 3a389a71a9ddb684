// The experiment file: the host's schemas, model presets, --set overrides, and parsing and
// validating a whole experiment against the host's and the plugins' schemas.
#include "linearnexus/host/config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "linearnexus/host/run_checkpoint.h"
#include "linearnexus/host/data.h"
#include "linearnexus/host/distributed.h"
#include "linearnexus/error.h"
#include "linearnexus/log.h"
#include "linearnexus/host/plugin_host.h"
#include "linearnexus/host/presets.h"
#include "linearnexus/host/read_file.h"
#include "yaml_params.h"

namespace fs = std::filesystem;

namespace linearnexus {

// ---- the host's schemas -----------------------------------------------------------------------

const Schema& top_schema() {
  static const Schema s = {
      {"name", ParamType::String, "run", "experiment name (default out_dir is runs/<name>)"},
      {"seed", ParamType::Int, "1337", "seed for initialisation, data order, dropout and sampling", {}, 0},
      {"device", ParamType::String, "auto", "where to run", {"auto", "cpu", "cuda"}},
      {"precision", ParamType::String, "fp32", "compute precision (master weights stay fp32)", {"fp32", "bf16"}},
  };
  return s;
}
const Schema& model_schema() {
  static const Schema s = {
      {"preset", ParamType::String, "\"\"",
       "a named model shape (fields here override it): see `linearnexus presets`; init_from = the model section of "
       "trainer.init_from's checkpoint (e.g. a model imported by `linearnexus convert hf-import`)"},
      {"vocab_size", ParamType::String, "auto", "vocabulary size, or auto = the tokenizer's"},
      {"hidden_size", ParamType::Int, "256", "model width C", {}, 1},
      {"n_layer", ParamType::Int, "4", "number of blocks", {}, 1},
      {"max_seq_len", ParamType::Int, "1024", "longest sequence the caches and positions allow", {}, 1},
      {"block_pattern", ParamType::StringList, "[attention]", "block names, repeated to fill n_layer"},
      {"tie_embeddings", ParamType::Bool, "true", "share the token embedding with the LM head"},
      {"dropout", ParamType::Float, "0.0", "dropout probability passed to every block", {}, 0, 1},
      {"norm",
       ParamType::String,
       "rmsnorm",
       "the final norm and every block's pre-norms: rmsnorm, or layernorm (with a bias, GPT-2)",
       {"rmsnorm", "layernorm"}},
      {"norm_eps", ParamType::Float, "1e-5", "epsilon of those norms", {}, 0},
      {"positions",
       ParamType::String,
       "none",
       "learned = absolute position embeddings (max_seq_len rows) added to the token embeddings (GPT-2); none = the "
       "blocks' own (RoPE)",
       {"none", "learned"}},
  };
  return s;
}
const Schema& schedule_schema() {
  static const Schema s = {
      {"warmup_steps", ParamType::Int, "100", "linear warmup from 0 to the optimizer's lr", {}, 0},
      {"decay", ParamType::String, "cosine", "decay after warmup", {"cosine", "linear", "constant"}},
      {"min_lr", ParamType::Float, "0.0", "learning rate reached at max_steps", {}, 0},
  };
  return s;
}
const Schema& trainer_common_schema() {
  static const Schema s = {
      {"max_steps", ParamType::Int, "1000", "optimizer steps (the schedule spans these)", {}, 1},
      {"stop_after",
       ParamType::Int,
       "0",
       "stop early after this many steps, saving a checkpoint to resume from (0 = run to max_steps)",
       {},
       0},
      {"grad_clip", ParamType::Float, "1.0", "global gradient-norm clip (0 = off)", {}, 0},
      {"log_every", ParamType::Int, "10", "steps between metric lines", {}, 1},
      {"trackers",
       ParamType::StringList,
       "[jsonl]",
       "where the metrics go: jsonl (out_dir/metrics.jsonl), tensorboard (event files in out_dir/tb/, with the experiment as text)",
       {"jsonl", "tensorboard"}},
      {"eval_every", ParamType::Int, "100", "steps between validation passes (0 = only at the end)", {}, 0},
      {"save_every", ParamType::Int, "500", "steps between checkpoints (a final one is always written)", {}, 0},
      {"keep_last_n", ParamType::Int, "2", "step checkpoints kept besides latest", {}, 0},
      {"activation_checkpointing", ParamType::String, "none",
       "keep only block inputs in the training forward and run blocks again in backward: none, blocks (every block) or N (every N-th block); costs one more forward of those blocks per step"},
      {"peak_tflops",
       ParamType::Float,
       "0",
       "per-GPU peak that the logged mfu divides by, in TFLOP/s (0 = measure a bf16 8192^3 matmul at startup; CUDA only)",
       {},
       0},
      {"out_dir", ParamType::String, "\"\"", "run folder (default runs/<name>)"},
      {"resume", ParamType::String, "\"\"",
       "\"\" = fresh run (refuses a folder with checkpoints), auto = continue from out_dir's latest, or a checkpoint path"},
      {"init_from", ParamType::String, "\"\"",
       "a fresh run starts from this checkpoint's weights (run folder or file) and reuses its tokenizer; the model section must match it"},
  };
  return s;
}
const Schema& plugins_schema() {
  static const Schema s = {
      {"paths", ParamType::StringList, "[]", "extra plugin folders (relative to the experiment file's folder)"}};
  return s;
}
const Schema& sample_schema() {
  static const Schema s = {
      {"prompt", ParamType::String, "\"\\n\"", "text the samples start from"},
      {"max_tokens", ParamType::Int, "200", "new tokens per sample", {}, 1},
      {"num_samples",
       ParamType::Int,
       "1",
       "samples printed after training (0 = none; `linearnexus sample` then prints one)",
       {},
       0},
      {"temperature", ParamType::Float, "0.8", "softmax temperature (0 = greedy)", {}, 0},
      {"top_k", ParamType::Int, "50", "keep the k most likely tokens (0 = off)", {}, 0},
      {"top_p", ParamType::Float, "0.95", "nucleus sampling mass (1 = off)", {}, 0, 1},
      {"chat", ParamType::Bool, "false",
       "the prompt is a user message: rendered with the tokenizer's chat template (ready for the assistant's reply), which stops at the end-of-turn token"},
  };
  return s;
}

// ---- presets ----------------------------------------------------------------------------------

namespace {
// Fill `dst` with src's entries that dst lacks (recursively for maps): the file overrides the preset.
void merge_under(YAML::Node dst, const YAML::Node& src) {
  for (const auto& kv : src) {
    const std::string k = kv.first.Scalar();
    if (!dst[k]) {
      dst[k] = YAML::Clone(kv.second);
    } else if (dst[k].IsMap() && kv.second.IsMap()) {
      merge_under(dst[k], kv.second);
    }
  }
}

// The value is YAML (numbers, lists, quoted strings); text that is not YAML at all (an unclosed
// bracket, ": " in a list) goes in as a string, which a key of another type then refuses by name.
// validate_section takes the text as typed for a string key (Source::overridden): "a: b" is text.
void apply_override(YAML::Node root, const std::string& assignment, std::map<std::string, std::string>& overridden) {
  auto eq = assignment.find('=');
  if (eq == std::string::npos || eq == 0)
    throw Error("--set '" + assignment + "': expected key.path=value, e.g. --set trainer.max_steps=100");
  const std::string path = assignment.substr(0, eq), text = assignment.substr(eq + 1);
  YAML::Node value;
  try {
    value = load_yaml_text(text, "--set " + path);
  } catch (const Error&) {
    value = YAML::Node(text);
  }
  set_yaml_path(root, path, value, "--set " + path);
  overridden[path] = text;
}
}  // namespace

// ---- experiments ------------------------------------------------------------------------------

ModelConfig Experiment::model_config(int64_t tokenizer_vocab_size) const {
  ModelConfig c = model;
  if (c.dims.vocab_size == 0) {
    c.dims.vocab_size = tokenizer_vocab_size;
  } else if (tokenizer_vocab_size > c.dims.vocab_size) {
    throw Error(source + ": model.vocab_size " + std::to_string(c.dims.vocab_size) +
                " is smaller than the tokenizer's vocabulary (" + std::to_string(tokenizer_vocab_size) +
                "); use vocab_size: auto");
  }
  return c;
}

namespace {

// The top-level keys of an experiment: the top schema's scalars and the sections.
const std::vector<std::string> kSections = {"name",   "seed",  "device",     "precision", "plugins",
                                            "data",   "model", "optimizer",  "schedule",  "trainer",
                                            "sample", "task",  "distributed"};

// The `model:` section: a preset's fields first, the file's on top; each block kind of the pattern
// validated against its plugin's schema (defaults for kinds the file does not configure).
// preset: init_from -> the model section of trainer.init_from's checkpoint, as YAML (a fine-tuning
// file then fits any imported model).
YAML::Node init_from_model(const YAML::Node& root, const YAML::Node& preset, const Source& src) {
  YAML::Node trainer = root["trainer"];
  const std::string init_from = trainer && trainer.IsMap() && trainer["init_from"] ? trainer["init_from"].Scalar() : "";
  if (init_from.empty())
    throw Error(src.at(preset, "model.preset") +
                ": preset init_from takes the model of trainer.init_from, which is not set; "
                "add e.g. --set trainer.init_from=runs/imported");
  std::string file;
  YAML::Node ckpt;
  try {
    file = resolve_checkpoint(init_from);
    ckpt = load_yaml_text(RunCheckpoint::read_config(file), "checkpoint " + file);
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {  // a path the file system refuses (too long, no permission...)
    throw Error(src.at(preset, "model.preset") + ": preset init_from: cannot read trainer.init_from '" + init_from +
                "': " + error_text(e));
  }
  if (!ckpt.IsMap() || !ckpt["model"] || !ckpt["model"].IsMap())
    throw Error("checkpoint " + file + ": its config has no model section; the file is corrupt or edited");
  YAML::Node m = YAML::Clone(ckpt["model"]);
  m.remove("preset");
  return m;
}

// model.preset: NAME -> its file's model fields.
YAML::Node load_preset(const YAML::Node& preset, const Source& src) {
  const std::string name = preset.Scalar();
  const auto files = preset_files();
  auto it = files.find(name);
  if (it == files.end()) {
    std::string list;
    for (const auto& [n, f] : files) list += " " + n;
    throw Error(src.at(preset, "model.preset") + ": unknown model preset '" + name +
                "'; presets:" + (list.empty() ? " none" : list) + " (files NAME.yaml in " + preset_dirs_text() + ")");
  }
  const YAML::Node fields = load_yaml_text(read_file(it->second.string(), file_kind::kExperiment), it->second.string());
  if (!fields.IsMap()) throw Error(it->second.string() + ": a model preset must be a map of model fields");
  return fields;
}

// The validated sections as Params, before they become typed settings: what the resolved YAML is
// written from (every default filled in).
struct Sections {
  Params top, data, model, lora, schedule, trainer, sample, distributed;
  std::map<std::string, Params> blocks;
};

void parse_model_section(const YAML::Node& root, const Source& src, const Registry& reg, Sections& sec) {
  // The file's own node (not a clone: a clone loses the line numbers errors point at); the preset's
  // fields are merged into it.
  const YAML::Node model_node = root["model"];
  YAML::Node model = model_node ? model_node : YAML::Node(YAML::NodeType::Map);
  if (!model.IsMap()) throw Error(src.at(model_node, "model") + ": 'model' must be a map");
  if (model["preset"] && model["preset"].Scalar() == "init_from") {
    merge_under(model, init_from_model(root, model["preset"], src));
    model["preset"] = "";  // resolved: the run's config holds the whole model, not a reference to another run
  } else if (model["preset"] && !model["preset"].Scalar().empty()) {
    merge_under(model, load_preset(model["preset"], src));
  }
  sec.model = validate_section(model, model_schema(), "model", src, {"blocks", "lora"});
  sec.lora = validate_section(model["lora"], lora_schema(), "model.lora", src);
  const auto& pattern = sec.model.get_string_list("block_pattern");
  if (pattern.empty()) throw Error(src.file + ": model.block_pattern must name at least one block");
  for (const auto& b : pattern) reg.get(PluginKind::Block, b, src.at(model["block_pattern"], "model.block_pattern"));
  YAML::Node blocks = model["blocks"];
  if (blocks && !blocks.IsNull()) {
    if (!blocks.IsMap())
      throw Error(src.at(blocks, "model.blocks") + ": 'model.blocks' must map block names to parameters");
    for (const auto& kv : blocks) {
      const std::string name = kv.first.Scalar();
      const auto& r = reg.get(PluginKind::Block, name, src.at(kv.first, "model.blocks." + name));
      sec.blocks[name] = validate_section(kv.second, r.schema, "model.blocks." + name, src);
    }
  }
  for (const auto& b : pattern)
    if (!sec.blocks.count(b))
      sec.blocks[b] = params_from_defaults(reg.get(PluginKind::Block, b).schema, "model.blocks." + b);
}

// The resolved experiment as YAML, every default filled in (re-parses to the same text).
std::string resolved_yaml(const Experiment& e, const Sections& sec) {
  YAML::Emitter out;
  YAML::Node r(YAML::NodeType::Map);
  for (const auto& [k, v] : sec.top.values()) r[k] = YAML::Load(value_to_yaml(v));
  if (!e.plugin_paths.empty()) r["plugins"]["paths"] = e.plugin_paths;
  r["data"] = params_to_yaml(sec.data);
  YAML::Node m = params_to_yaml(sec.model);
  for (const auto& [name, p] : sec.blocks) m["blocks"][name] = params_to_yaml(p);
  if (e.model.lora.enabled()) m["lora"] = params_to_yaml(sec.lora);  // rank 0: the section stays out, as before LoRA
  r["model"] = m;
  YAML::Node o = params_to_yaml(e.optimizer);
  o["name"] = e.optimizer_name;
  r["optimizer"] = o;
  r["schedule"] = params_to_yaml(sec.schedule);
  Params trainer = sec.trainer;  // the host's keys and the plugin's, in one sorted map as they were read
  for (const auto& [k, v] : e.trainer_params.values()) trainer.set(k, v);
  YAML::Node t = params_to_yaml(trainer);
  t["name"] = e.trainer_name;
  r["trainer"] = t;
  r["sample"] = params_to_yaml(sec.sample);
  r["distributed"] = params_to_yaml(sec.distributed);
  if (!e.task_name.empty()) {
    YAML::Node tk = params_to_yaml(e.task);
    tk["name"] = e.task_name;
    r["task"] = tk;
  }
  out << r;
  return std::string(out.c_str()) + "\n";
}

// A section whose `name:` picks a plugin of `kind` (optimizer, trainer, task); the rest is that
// plugin's schema after `common` (the host's keys for every plugin of the kind). Returns the
// plugin's own keys; the host's common ones go to `common_out`.
Params parse_plugin_section(const YAML::Node& root, const char* section, PluginKind kind, const char* fallback,
                            const Schema& common, const Registry& reg, const Source& src, std::string* name_out,
                            Params* common_out = nullptr) {
  const std::string& origin = src.file;
  YAML::Node n = root[section];
  std::string name = fallback;
  if (n && n.IsMap() && n["name"]) name = n["name"].Scalar();
  const auto& r =
      reg.get(kind, name, n && n.IsMap() && n["name"] ? src.at(n["name"], std::string(section) + ".name") : origin);
  Schema schema = common;
  schema.insert(schema.end(), r.schema.begin(), r.schema.end());
  *name_out = name;
  // `--optimizer muon` on a file written for adamw: the file's keys belong to the plugin it named,
  // so keys the newly chosen plugin does not know are dropped (with a warning) rather than refused.
  // Keys set on the command line are still checked.
  if (n && n.IsMap() && src.overridden.count(std::string(section) + ".name")) {
    std::vector<std::string> dropped;
    for (const auto& kv : n) {
      const std::string key = kv.first.Scalar();
      bool known = key == "name" || src.overridden.count(std::string(section) + "." + key);
      for (const auto& spec : schema) known = known || spec.key == key;
      if (!known) dropped.push_back(key);
    }
    for (const auto& key : dropped) {
      log_warn(origin + ": " + section + "." + key + " is not a key of " + plugin_kind_name(kind) + " '" + name +
               "' (chosen on the command line); ignoring it");
      n.remove(key);
    }
  }
  const Params all = validate_section(n, schema, section, src, {"name"});
  Params own(section), host(section);
  for (const auto& [k, v] : all.values()) {
    const bool is_common = std::any_of(common.begin(), common.end(), [&](const ParamSpec& c) { return c.key == k; });
    (is_common ? host : own).set(k, v);
  }
  if (common_out) *common_out = host;
  return own;
}

// ---- the typed settings: each host section parsed once ---------------------------------------

RunSettings run_settings(const Params& p) {
  return {p.get_string("name"), static_cast<uint64_t>(p.get_int("seed")), p.get_string("device"),
          p.get_string("precision")};
}

ScheduleSettings schedule_settings(const Params& p) {
  return {p.get_int("warmup_steps"), p.get_string("decay"), p.get_float("min_lr")};
}

// trainer.activation_checkpointing as a block interval: none -> 0, blocks -> 1, N -> N.
int64_t activation_checkpoint_every(const std::string& v, const std::string& source) {
  if (v == "none") return 0;
  if (v == "blocks") return 1;
  if (!v.empty() && v.size() < 10 && std::all_of(v.begin(), v.end(), [](char c) { return c >= '0' && c <= '9'; }) &&
      std::stoll(v) > 0)
    return std::stoll(v);
  throw Error(source +
              ": trainer.activation_checkpointing must be none, blocks or a positive number N (every N-th "
              "block), not '" +
              v + "'");
}

TrainerSettings trainer_settings(const Params& p, const RunSettings& run, const std::string& source) {
  TrainerSettings t;
  t.max_steps = p.get_int("max_steps");
  t.stop_after = p.get_int("stop_after");
  t.grad_clip = p.get_float("grad_clip");
  t.log_every = std::max<int64_t>(1, p.get_int("log_every"));
  t.jsonl = t.tensorboard = false;
  for (const auto& tracker : p.get_string_list("trackers")) (tracker == "jsonl" ? t.jsonl : t.tensorboard) = true;
  t.eval_every = p.get_int("eval_every");
  t.activation_checkpoint_every = activation_checkpoint_every(p.get_string("activation_checkpointing"), source);
  t.peak_tflops = p.get_float("peak_tflops");
  t.out_dir = p.get_string("out_dir");
  if (t.out_dir.empty()) t.out_dir = (fs::path("runs") / run.name).string();
  t.save_every = p.get_int("save_every");
  t.keep_last_n = p.get_int("keep_last_n");
  t.resume = p.get_string("resume");
  t.init_from = p.get_string("init_from");
  return t;
}

SampleSettings sample_settings(const Params& p) {
  return {p.get_string("prompt"), p.get_int("max_tokens"), p.get_int("num_samples"), p.get_float("temperature"),
          p.get_int("top_k"),     p.get_float("top_p"),    p.get_bool("chat")};
}

ModelConfig model_settings(const Params& m, const std::map<std::string, Params>& blocks, const std::string& source) {
  ModelConfig c;
  const std::string& vs = m.get_string("vocab_size");
  if (vs != "auto") {
    char* end = nullptr;
    c.dims.vocab_size = std::strtoll(vs.c_str(), &end, 10);
    if (*end || c.dims.vocab_size <= 0)
      throw Error(source + ": model.vocab_size must be a positive integer or auto (got '" + vs + "')");
  }
  c.dims.hidden_size = m.get_int("hidden_size");
  c.dims.n_layer = m.get_int("n_layer");
  c.dims.max_seq_len = m.get_int("max_seq_len");
  c.dims.dropout = m.get_float("dropout");
  c.block_pattern = m.get_string_list("block_pattern");
  c.block_params = blocks;
  c.tie_embeddings = m.get_bool("tie_embeddings");
  c.dims.norm = m.get_string("norm") == "layernorm" ? NormKind::LayerNorm : NormKind::RMSNorm;
  c.dims.norm_eps = m.get_float("norm_eps");
  c.learned_positions = m.get_string("positions") == "learned";
  return c;
}

}  // namespace

Experiment parse_experiment(const std::string& yaml_text, const std::string& origin, const std::string& base_dir,
                            const std::vector<std::string>& overrides, PluginHost& host, PluginPaths plugin_paths,
                            const std::string& plugin_dir) {
  Source src{origin, {}};
  YAML::Node root = load_yaml_text(yaml_text, origin);
  if (root.IsNull()) root = YAML::Node(YAML::NodeType::Map);
  if (!root.IsMap()) throw Error(origin + ": an experiment file must be a YAML map (name:, model:, trainer:, ...)");
  for (const auto& o : overrides) apply_override(root, o, src.overridden);

  for (const auto& kv : root) {
    const std::string key = kv.first.Scalar();
    if (std::find(kSections.begin(), kSections.end(), key) == kSections.end()) {
      std::string near = nearest_key(key, kSections);
      std::string list;
      for (const auto& s : kSections) list += (list.empty() ? "" : ", ") + s;
      throw Error(src.at(kv.first, key) + ": unknown key '" + key + "'" +
                  (near.empty() ? "" : "; did you mean '" + near + "'?") + " top-level keys: " + list);
    }
  }

  Experiment e;
  Sections sec;
  e.source = origin;
  e.base_dir = base_dir;
  std::set<std::string> sections(kSections.begin(), kSections.end());  // the maps below, skipped here
  for (const auto& spec : top_schema()) sections.erase(spec.key);
  sec.top = validate_section(root, top_schema(), "experiment", src, sections);

  // Plugins first: the other sections are validated against what they register.
  YAML::Node plugins = root["plugins"];
  Params pp = validate_section(plugins, plugins_schema(), "plugins", src);
  const fs::path relative_to = src.overridden.count("plugins.paths") ? fs::path() : fs::path(plugin_dir);
  for (auto p : pp.get_string_list("paths")) {
    if (plugin_paths == PluginPaths::Ignore) {
      e.plugin_paths.push_back(p);
      continue;
    }
    // Stored absolute, so the resolved experiment (config.yaml, checkpoints) names the same folders
    // wherever it is read from.
    const fs::path dir = fs::absolute(relative_to / p).lexically_normal();
    if (!fs::is_directory(dir))
      throw Error(src.at(plugins["paths"], "plugins.paths") + ": plugin folder '" + dir.string() + "' does not exist");
    e.plugin_paths.push_back(dir.string());
    host.load_dir(dir.string());
  }
  const Registry& reg = host.registry();

  sec.data = validate_section(root["data"], data_schema(), "data", src);
  parse_model_section(root, src, reg, sec);
  e.optimizer =
      parse_plugin_section(root, "optimizer", PluginKind::Optimizer, "adamw", {}, reg, src, &e.optimizer_name);
  sec.schedule = validate_section(root["schedule"], schedule_schema(), "schedule", src);
  e.trainer_params = parse_plugin_section(root, "trainer", PluginKind::Trainer, "sft", trainer_common_schema(), reg,
                                          src, &e.trainer_name, &sec.trainer);
  sec.sample = validate_section(root["sample"], sample_schema(), "sample", src);
  sec.distributed = validate_section(root["distributed"], distributed_schema(), "distributed", src);
  // task: optional; `name:` picks the task plugin (RL trainers and data.path: task need one).
  if (root["task"] && !root["task"].IsNull()) {
    YAML::Node tn = root["task"];
    if (!tn.IsMap() || !tn["name"])
      throw Error(src.at(tn, "task") + ": 'task' must be a map with a name, e.g. task: {name: arithmetic}; tasks: " +
                  reg.names_text(PluginKind::Task));
    e.task = parse_plugin_section(root, "task", PluginKind::Task, "", {}, reg, src, &e.task_name);
  }

  e.run = run_settings(sec.top);
  e.data = DataSettings::from(sec.data);
  e.model = model_settings(sec.model, sec.blocks, origin);
  e.model.lora = LoraConfig::from(sec.lora);
  e.schedule = schedule_settings(sec.schedule);
  e.trainer = trainer_settings(sec.trainer, e.run, origin);
  e.sample = sample_settings(sec.sample);
  e.distributed = DistributedSettings::from(sec.distributed);
  if (e.data.path == "task" && e.task_name.empty())
    throw Error(origin +
                ": data.path is 'task' but the experiment has no task section; add e.g. task: {name: arithmetic}");
  e.resolved_yaml = resolved_yaml(e, sec);
  return e;
}

void check_for_training(const Experiment& e, const Registry& registry) {
  if (e.data.seq_len > e.model.dims.max_seq_len)
    throw Error(e.source + ": data.seq_len (" + std::to_string(e.data.seq_len) +
                ") is longer than model.max_seq_len (" + std::to_string(e.model.dims.max_seq_len) + ")");
  // The trainer's own checks live in its constructor and in check_start (what it needs of the
  // experiment's other sections): make one, ask it, drop it.
  registry.make_trainer(e.trainer_name, e.trainer_params)->check_start({e.task_name, e.trainer.init_from});
}

Experiment load_experiment(const std::string& path, const std::vector<std::string>& overrides, PluginHost& host) {
  const std::string text = read_file(path, file_kind::kExperiment);
  // Relative data.path and out_dir are relative to the working directory, as on the command line;
  // plugins.paths are relative to the file's folder, so that a file names the plugins it ships with
  // wherever it is run from.
  return parse_experiment(text, path, "", overrides, host, PluginPaths::Load, fs::path(path).parent_path().string());
}

}  // namespace linearnexus
