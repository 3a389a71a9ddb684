// The `linearnexus` program: run / validate experiments, sample from checkpoints, list plugins.
#include <CLI/CLI.hpp>

#include <signal.h>
#include <unistd.h>

#include <torch/cuda.h>
#include <torch/nn.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <fstream>
#include <iostream>
#include <sstream>

#include "linearnexus/error.h"
#include "linearnexus/host/atomic_file.h"
#include "linearnexus/host/config.h"
#include "linearnexus/host/data.h"
#include "linearnexus/host/distributed.h"
#include "linearnexus/host/examples.h"
#include "linearnexus/host/generator.h"
#include "linearnexus/host/params_yaml.h"
#include "linearnexus/host/plugin_host.h"
#include "linearnexus/host/preflight.h"
#include "linearnexus/host/presets.h"
#include "linearnexus/host/run_checkpoint.h"
#include "linearnexus/host/runtime.h"
#include "linearnexus/host/session.h"
#include "linearnexus/host/token_files.h"
#include "linearnexus/host/tokenizers.h"
#include "linearnexus/log.h"
#include "linearnexus/plugin.h"
#include "linearnexus/trainer.h"
#include "linearnexus/version.h"
#include "command_hints.h"
#include "data_commands.h"
#include "launcher.h"
#include "model_commands.h"
#include "plugin_errors.h"
#include "sample_prompts.h"
#include "serve_commands.h"

namespace fs = std::filesystem;
using namespace linearnexus;

namespace {

// The command-line flag of a sample key: max_tokens -> max-tokens.
std::string sample_flag(std::string key) {
  for (auto& c : key)
    if (c == '_') c = '-';
  return key;
}

// A run must not silently lose a plugin the user put on the path: any file that failed to load
// stops it (`linearnexus plugins` lists them all without failing).
void fail_on_plugin_problems(const PluginHost& host) {
  if (!host.problems().empty())
    throw Error(host.problems().front().message + " (remove it from the plugin folder, or rebuild it)");
}

// Print the sample section's samples, streaming tokens as they come. sample.chat: the prompt is a
// user message in the tokenizer's chat template (as `data chat-render --add-generation-prompt`
// shows it), and a reply ends at the tokenizer's end-of-turn token, which is not printed.
void print_samples(const LMModel& model, const Registry& registry, const Tokenizer& tok, const SampleSettings& s,
                   uint64_t seed) {
  SamplingParams sp = sampling_params(s);
  std::string prompt = s.prompt;
  if (s.chat) {
    prompt = render_user_message(tok, s.prompt, "sample.prompt (sample.chat)");
    sp.eos_id = tok.eos_id();
  }
  DecodeGenerator generator(model, registry);
  // Encoded before anything is printed: a prompt the vocabulary lacks is an error line of its own,
  // not one glued to the echoed prompt.
  const std::vector<int64_t> prompt_ids = tok.encode(prompt);
  for (int64_t i = 0; i < s.num_samples; ++i) {
    sp.seed = seed + static_cast<uint64_t>(i);
    std::string text =
        "---- sample " + std::to_string(i + 1) + " ----\n" + (s.chat ? "user: " + s.prompt + "\nassistant: " : prompt);
    std::cout << text << std::flush;
    int64_t tokens = 0;
    const auto t0 = std::chrono::steady_clock::now();
    generator.generate(prompt_ids, sp, [&](int64_t t) {
      ++tokens;
      if (s.chat && t == sp.eos_id) return true;
      const std::string piece = tok.decode({t});
      std::cout << piece << std::flush;
      text += piece;
      return true;
    });
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::cout << "\n" << std::flush;
    log_file_text(text + "\n");  // a run's train.log holds its samples too (stdout is not a log line)
    char rate[128];
    std::snprintf(rate, sizeof rate,
                  "sample %lld: %lld new tokens in %.2f s (%.1f tokens/s, the prompt's prefill included)",
                  static_cast<long long>(i + 1), static_cast<long long>(tokens), seconds,
                  seconds > 0 ? static_cast<double>(tokens) / seconds : 0.0);
    log_info(rate);
  }
}

// `run` once the run folder is held: its samples and its last error also go to train.log (cmd_run).
int train_and_sample(const Experiment& exp, PluginHost& host, HostTrainingRun& run, bool no_sample) {
  const bool main_rank = run.is_main();  // data-parallel runs: rank 0 writes and prints
  const bool samples = main_rank && !no_sample && exp.sample.num_samples > 0;
  if (samples) check_sample_prompt(exp, run.tokenizer());  // not after an hour of training
  log_info(run.describe());
  if (main_rank) {
    write_file_atomically((fs::path(run.out_dir()) / "config.yaml").string(), exp.resolved_yaml);
    write_file_atomically((fs::path(run.out_dir()) / "tokenizer.json").string(), run.tokenizer().to_json());
  }
  auto trainer = host.registry().make_trainer(exp.trainer_name, exp.trainer_params);
  // SIGTERM / SIGINT while training: stop after the step, save, say so (runtime.h).
  install_stop_signals();
  try {
    trainer->run(run);
  } catch (const std::exception&) {
    restore_stop_signals();
    // Every rank of a stopped data-parallel run ends with the same message: rank 0 says it.
    if (stop_signal() && !main_rank) return 1;
    throw;
  }
  restore_stop_signals();
  if (stop_signal())
    throw Error("stopped by " + signal_name(stop_signal()) + " after the last step: the run is complete and saved in " +
                run.out_dir() + " (no samples printed)");
  if (samples) print_samples(run.model(), host.registry(), run.tokenizer(), exp.sample, exp.run.seed);
  return 0;
}

int cmd_run(const std::string& path, const std::vector<std::string>& overrides, bool no_sample) {
  watch_launcher();  // a rank of run --nproc stops when its launcher is gone
  PluginHost host;
  return with_plugin_errors_copied([&] {
    Experiment exp = load_experiment(path, overrides, host);
    fail_on_plugin_problems(host);
    auto run = prepare_run(exp, host);
    try {
      return train_and_sample(exp, host, *run, no_sample);
    } catch (const std::exception& e) {
      log_file_text("error: " + error_text(e) + "\n");  // train.log ends as the console does
      throw;
    }
  });
}

int cmd_validate(const std::string& path, const std::vector<std::string>& overrides, bool print) {
  PluginHost host;
  return with_plugin_errors_copied([&] {
    Experiment exp = load_experiment(path, overrides, host);
    fail_on_plugin_problems(host);
    preflight(exp, host);  // everything run checks before training (preflight.h)
    if (print) std::cout << exp.resolved_yaml;
    std::cout << path << ": valid (" << exp.model.dims.n_layer << " layers of";
    for (const auto& b : exp.model.block_pattern) std::cout << " " << b;
    std::cout << ", optimizer " << exp.optimizer_name << ", trainer " << exp.trainer_name << ")\n";
    return 0;
  });
}

struct SampleOptions {
  std::string checkpoint, device = "cpu";
  uint64_t seed = 0;
  std::string prompts, output;  // --prompts FILE [--output FILE.jsonl] (sample_prompts.h)
  int64_t max_batch = 16;
  // Sample keys given on the command line (YAML text by key); the rest come from the checkpoint's
  // `sample:` section.
  std::map<std::string, std::string> given;
};

int cmd_sample(const SampleOptions& o) {
  PluginHost host;
  return with_plugin_errors_copied([&] {
    // Options given on the command line override the checkpoint's sample: section, validated by its
    // schema; a string option is taken as it is, not as YAML ("--prompt 'a: b'" is text).
    std::vector<std::string> overrides;
    for (const auto& spec : sample_schema()) {
      auto it = o.given.find(spec.key);
      if (it == o.given.end()) continue;
      ParamValue text;
      text.type = ParamType::String, text.s = it->second;
      overrides.push_back("sample." + spec.key + "=" +
                          (spec.type == ParamType::String ? value_to_yaml(text) : it->second));
    }
    LoadedModel lm = load_model_from_checkpoint(o.checkpoint, host, o.device, overrides);
    SampleSettings s = lm.experiment.sample;
    // A run that printed no samples after training (num_samples: 0) still samples here: that is
    // what the command is for.
    if (s.num_samples == 0 && !o.given.count("num_samples")) s.num_samples = 1;
    if (!o.prompts.empty())
      return sample_prompts_file(*lm.model, host.registry(), *lm.tokenizer, s, o.seed, o.prompts, o.output,
                                 o.max_batch);
    print_samples(*lm.model, host.registry(), *lm.tokenizer, s, o.seed);
    return 0;
  });
}

// `plugins describe NAME` found nothing: the nearest name of any kind, and everything there is.
std::string unknown_plugin_name(const PluginHost& host, const std::string& name) {
  std::vector<std::string> all;
  std::string listing;
  for (PluginKind kind : {PluginKind::Block, PluginKind::Optimizer, PluginKind::Trainer, PluginKind::Task}) {
    auto names = host.registry().names(kind);
    all.insert(all.end(), names.begin(), names.end());
    listing += std::string("; ") + plugin_kind_name(kind) +
               "s: " + (names.empty() ? "(none)" : host.registry().names_text(kind));
  }
  for (const auto& p : host.plugins()) all.push_back(p.name);
  const std::string near = nearest_key(name, all);
  return "plugins describe: no block, optimizer, trainer, task or plugin is named '" + name + "'" +
         (near.empty() ? "" : "; did you mean '" + near + "'?") + listing;
}

int cmd_plugins(const std::string& describe) {
  PluginHost host;
  const Registry& reg = host.registry();
  if (!describe.empty()) {
    bool found = false;
    for (const auto* r : reg.all()) {
      if (r->name != describe && r->origin.plugin_name != describe) continue;
      found = true;
      std::cout << plugin_kind_name(r->kind) << " '" << r->name << "' — " << r->doc << "\n  from " << r->origin.file
                << " (plugin " << r->origin.plugin_name << " " << r->origin.plugin_version << ")\n";
      if (r->schema.empty())
        std::cout << "  (no parameters of its own)\n";
      else
        std::cout << describe_schema(r->schema);
      if (r->kind == PluginKind::Trainer)
        std::cout << "  and the keys every trainer takes:\n" << describe_schema(trainer_common_schema());
    }
    if (!found) throw Error(unknown_plugin_name(host, describe));
    return 0;
  }
  std::cout << "plugin folders searched: " << host.search_path_text() << "\n";
  for (const auto& p : host.plugins()) {
    std::cout << p.name << " " << p.version << "  " << p.file << "\n    " << p.description << " (plugin ABI " << p.abi
              << ", LibTorch " << p.torch_version << ")\n    registers:";
    for (const auto& r : p.registered) std::cout << " [" << r << "]";
    std::cout << "\n";
  }
  for (const auto& p : host.problems()) std::cout << "NOT LOADED " << p.file << ": " << p.message << "\n";
  return 0;
}

// The YAML reference (docs/config.md is this output): the host's sections from their schemas, then
// every loaded plugin's own keys, so the document cannot drift from what the validator accepts.
int cmd_docs() {
  PluginHost host;
  std::cout
      << "# Experiment YAML reference\n\n"
         "<!-- Generated by `build/bin/linearnexus docs > docs/config.md`; a test checks it is current. -->\n\n"
         "An experiment is one YAML file. Every key is optional unless marked (required); unknown keys are errors\n"
         "that name the file, line and the nearest valid key. `linearnexus validate --print exp.yaml` prints the\n"
         "resolved experiment with every default filled in; `--set key.path=value` overrides any key from the\n"
         "command line (`--model NAME`, `--optimizer NAME` and `--lr X` are shortcuts for `model.preset`,\n"
         "`optimizer.name` and `optimizer.lr`).\n\n";
  auto section = [](const std::string& title, const std::string& text, const Schema& schema) {
    std::cout << "## " << title << "\n\n" << text << "\n\n" << describe_schema_markdown(schema) << "\n";
  };
  section("Top level", "`name`, `seed`, `device`, `precision`; the sections below are maps.", top_schema());
  section("`plugins`", "Extra plugin folders, searched after the build's plugin folder and `$LINEARNEXUS_PLUGIN_PATH`.",
          plugins_schema());
  section("`data`", "What to train on and how to tokenize it.", data_schema());
  std::string presets;
  for (const auto& p : preset_names()) presets += " `" + p + "`";
  section(
      "`model`",
      "The model: token embedding (plus learned positions with `positions: learned`), `n_layer` blocks named by "
      "`block_pattern` (repeated to fill `n_layer`), final norm (`norm`: RMSNorm or LayerNorm), LM head. `blocks` maps a block name to that block's parameters (see Blocks below), e.g. "
      "`blocks: {attention: {n_head: 4}}`. Presets:" +
          presets + ".",
      model_schema());
  section("`model.lora`",
          "LoRA adapters on the blocks' Linear layers: with `rank` > 0 only the adapters train (the rest is frozen), "
          "merged into each adapted weight every forward so no block needs to know (README, Post-training; "
          "`convert merge-lora`, `convert peft-export`).",
          lora_schema());
  section("`schedule`", "Learning-rate schedule: linear warmup, then decay to `min_lr` at `trainer.max_steps`.",
          schedule_schema());
  section("`trainer`",
          "`name:` picks the trainer plugin (default `sft`); these keys are common to every trainer, "
          "and each trainer adds its own (see Trainers below).",
          trainer_common_schema());
  section("`sample`", "Samples printed after training (and defaults for `linearnexus sample`).", sample_schema());
  section("`distributed`",
          "Data-parallel runs (`run --nproc N`, or torchrun's environment): how ranks talk. Ignored "
          "by a single process. See README, Data-parallel training.",
          distributed_schema());
  section("`task`",
          "Optional: the task the RL trainers (`grpo`, `ppo`) draw prompts from and score, and the text "
          "`data.path: task` trains on. `name:` picks the task plugin; its keys follow (see Tasks below).",
          Schema{{"name", ParamType::String, "(required)", "task plugin name"}});
  const std::pair<PluginKind, const char*> kinds[] = {
      {PluginKind::Block, "Blocks (`model.blocks.NAME`)"},
      {PluginKind::Optimizer, "Optimizers (`optimizer:` with `name: NAME`)"},
      {PluginKind::Trainer, "Trainers (`trainer:` with `name: NAME`)"},
      {PluginKind::Task, "Tasks (`task:` with `name: NAME`)"}};
  for (const auto& [kind, title] : kinds) {
    auto names = host.registry().names(kind);
    if (names.empty()) continue;
    std::cout << "# " << title << "\n\n";
    for (const auto& n : names) {
      const auto& r = host.registry().get(kind, n);
      std::cout << "## `" << n << "`\n\n"
                << r.doc << " (plugin `" << r.origin.plugin_name << "` " << r.origin.plugin_version << ")\n\n";
      if (r.schema.empty())
        std::cout << "No keys of its own.\n\n";
      else
        std::cout << describe_schema_markdown(r.schema) << "\n";
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    init_runtime();
  } catch (const std::exception& e) {  // a bad LINEARNEXUS_NUM_THREADS / OMP_NUM_THREADS
    std::cerr << "error: " << error_text(e) << "\n";
    return 1;
  }
  CLI::App app{"LinearNexus: train language models from YAML experiments and plugin blocks"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("linearnexus ") + LINEARNEXUS_VERSION + " (plugin ABI " +
                                        std::to_string(LINEARNEXUS_PLUGIN_ABI_VERSION) + ", LibTorch " +
                                        LINEARNEXUS_TORCH_VERSION + ", " +
                                        (LINEARNEXUS_BUILT_WITH_CUDA ? "CUDA" : "CPU only") + ")");

  std::string path, describe_name, model_preset, optimizer_name;
  double lr = 0;
  std::vector<std::string> overrides;
  bool no_sample = false, print = false;
  auto add_overrides = [&](CLI::App* c) {
    c->add_option("experiment", path, "experiment YAML file")->required();
    c->add_option("--set", overrides, "override a key: --set trainer.max_steps=100 (repeatable)");
    c->add_option("--model", model_preset, "model preset (same as --set model.preset=NAME)");
    c->add_option("--optimizer", optimizer_name, "optimizer plugin (same as --set optimizer.name=NAME)");
    c->add_option("--lr", lr, "learning rate (same as --set optimizer.lr=VALUE)");  // typed: FLOAT in --help
  };
  auto* run = app.add_subcommand("run", "train an experiment, then print samples");
  add_overrides(run);
  run->add_flag("--no-sample", no_sample, "skip the samples printed after training");
  int64_t nproc = 1, nproc_max = 0;
  run->add_option("--nproc", nproc,
                  "data-parallel ranks on this machine (one per GPU on CUDA); torchrun's environment works too")
      ->check(CLI::Range(int64_t{1}, int64_t{1024}));
  run->add_option("--nproc-max", nproc_max,
                  "the most ranks --nproc may start on the CPU (default: the CPU cores this process may use)")
      ->check(CLI::Range(int64_t{1}, int64_t{1024}));
  auto* validate = app.add_subcommand("validate", "check an experiment file without running it");
  add_overrides(validate);
  validate->add_flag("--print", print, "print the resolved experiment (every default filled in)");

  SampleOptions so;
  auto* sample = app.add_subcommand("sample", "generate text from a checkpoint, streaming it to stdout");
  sample->add_option("--checkpoint", so.checkpoint, "run folder (uses its latest) or checkpoint file")->required();
  sample->add_option("--seed", so.seed, "sampling seed");
  // The sample keys, documented by their schema; a key not given keeps the checkpoint's value.
  // Numbers are parsed as numbers (INT / FLOAT in --help, CLI11's error for "--top-k x").
  for (const auto& spec : sample_schema()) {
    const std::string flag = "--" + sample_flag(spec.key),
                      doc = spec.doc + " (default: the checkpoint's sample." + spec.key + ")";
    if (spec.type == ParamType::Bool)
      sample->add_flag_callback(
          flag, [&so, key = spec.key] { so.given[key] = "true"; }, doc);
    else if (spec.type == ParamType::Int)
      sample->add_option_function<int64_t>(
          flag, [&so, key = spec.key](int64_t v) { so.given[key] = std::to_string(v); }, doc);
    else if (spec.type == ParamType::Float)
      sample->add_option_function<double>(
          flag, [&so, key = spec.key](double v) { so.given[key] = number_text(v); }, doc);
    else
      sample->add_option_function<std::string>(
          flag, [&so, key = spec.key](const std::string& v) { so.given[key] = v; }, doc);
  }
  sample->add_option("--device", so.device, "cpu, cuda or auto");
  auto* prompts_option = sample->add_option(
      "--prompts", so.prompts,
      "a file of prompts, one a line (or .jsonl rows {\"prompt\": ...} / {\"messages\": [...]}), decoded with "
      "continuous batching; prompt i drawn with seed + i; one JSON line per prompt out");
  sample->add_option("--output", so.output, "with --prompts: write the JSON lines to this file instead of stdout")
      ->needs(prompts_option);
  sample->add_option("--max-batch", so.max_batch, "with --prompts: rows decoded together")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{4096}))
      ->needs(prompts_option);

  auto* plugins = app.add_subcommand("plugins", "list the plugins found, or describe one");
  auto* describe = plugins->add_subcommand("describe", "print a plugin's parameters: types, defaults, docs");
  describe->add_option("name", describe_name, "block, optimizer, trainer or plugin name")->required();

  ModelCommands model_commands(app);  // convert hf-import / hf-export, eval
  DataCommands data_commands(app);    // tokenize, data prepare / chat-render
  ServeCommands serve_commands(app);  // serve, chat

  auto* docs = app.add_subcommand("docs", "print the YAML reference in Markdown (docs/config.md)");
  auto* presets = app.add_subcommand("presets", "list the model presets (model.preset / --model)");

  try {
    app.parse(argc, argv);
  } catch (const CLI::Success& e) {  // --help, --version
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    // One line and exit 1, like every other error (CLI11's own format spans lines and exits 100+).
    const std::string unknown = unknown_command(app, argc, argv);
    std::string msg = unknown.empty() ? e.what() : unknown;
    std::cerr << "error: " << msg.substr(0, msg.find('\n')) << " (see linearnexus --help)\n";
    return 1;
  }

  try {
    if (!model_preset.empty()) overrides.push_back("model.preset=" + model_preset);
    if (!optimizer_name.empty()) overrides.push_back("optimizer.name=" + optimizer_name);
    if (run->count("--lr") || validate->count("--lr")) overrides.push_back("optimizer.lr=" + number_text(lr));
    if (run->parsed())
      return nproc > 1 ? launch_ranks(nproc, nproc_max, path, overrides, argv) : cmd_run(path, overrides, no_sample);
    if (validate->parsed()) return cmd_validate(path, overrides, print);
    if (sample->parsed()) return cmd_sample(so);
    if (plugins->parsed()) return cmd_plugins(describe->parsed() ? describe_name : "");
    if (docs->parsed()) return cmd_docs();
    if (data_commands.parsed()) return data_commands.run();
    if (model_commands.parsed()) return model_commands.run();
    if (serve_commands.parsed()) return serve_commands.run();
    if (presets->parsed()) {
      PluginHost host;
      std::cout << describe_presets(host);
      return 0;
    }
  } catch (const std::exception& e) {
    // One line for every error; LibTorch's (c10::Error) without the C++ backtrace it carries.
    std::cerr << "error: " << error_text(e) << "\n";
    return 1;
  }
  return 0;
}
