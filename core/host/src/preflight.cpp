// Checks of a run that train nothing (preflight.h): what `validate` and the `run --nproc` launcher
// run, in the order prepare_run (session.cpp) meets them, so both refuse with the same error.
#include "linearnexus/host/preflight.h"

#include <sys/file.h>
#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <map>
#include <set>

#include "linearnexus/error.h"
#include "linearnexus/host/data.h"
#include "linearnexus/host/distributed.h"
#include "linearnexus/host/plugin_host.h"
#include "linearnexus/host/run_checkpoint.h"
#include "linearnexus/host/runtime.h"
#include "linearnexus/host/session.h"
#include "linearnexus/optimizer.h"
#include "linearnexus/registry.h"
#include "linearnexus/task.h"
#include "linearnexus/trainer.h"

namespace fs = std::filesystem;

namespace linearnexus {

namespace {
// LibTorch's allocation failure (c10::Error "DefaultCPUAllocator: can't allocate memory: you tried
// to allocate N bytes") or std::bad_alloc: the bytes asked for (0 when unknown), else -1.
int64_t failed_allocation(const std::exception& e) {
  if (dynamic_cast<const std::bad_alloc*>(&e)) return 0;
  const std::string msg = e.what();
  if (msg.find("can't allocate memory") == std::string::npos && msg.find("out of memory") == std::string::npos)
    return -1;
  const auto at = msg.find("allocate ", msg.find("tried to"));
  return at == std::string::npos ? 0 : std::atoll(msg.c_str() + at + 9);
}

// The keys that size a tensor of `bytes` fp32 bytes, for the message of a failed allocation.
std::string keys_sizing(const ModelConfig& c, int64_t bytes) {
  const auto& d = c.dims;
  if (bytes == d.vocab_size * d.hidden_size * 4) return "model.vocab_size x model.hidden_size (the embedding)";
  if (bytes == d.max_seq_len * d.hidden_size * 4) return "model.max_seq_len x model.hidden_size (the position table)";
  std::string blocks;
  for (const auto& b : std::set<std::string>(c.block_pattern.begin(), c.block_pattern.end()))
    blocks += (blocks.empty() ? "model.blocks." : ", model.blocks.") + b;
  return "model.hidden_size and " + blocks + " (a layer's tensors), or model.n_layer";
}

[[noreturn]] void out_of_memory(const ModelConfig& c, int64_t bytes, const std::string& source) {
  throw Error(source + ": building the model needs more memory than this machine has (LibTorch could not allocate " +
              (bytes > 0 ? std::to_string(bytes) + " bytes" : std::string("a tensor")) + ": " + keys_sizing(c, bytes) +
              " ask for it; model.hidden_size " + std::to_string(c.dims.hidden_size) + ", n_layer " +
              std::to_string(c.dims.n_layer) + ", vocab_size " + std::to_string(c.dims.vocab_size) + ")");
}

// The model's fp32 weights alone against this machine's memory: run would fail to allocate them (or be
// killed touching them). Each layer counted as the one built of its kind.
void check_model_fits(const ModelConfig& c, const std::map<std::string, int64_t>& layer_numel,
                      const std::string& source) {
  const auto& d = c.dims;
  const double embedding = static_cast<double>(d.vocab_size) * static_cast<double>(d.hidden_size);
  double n = embedding * (c.tie_embeddings ? 1 : 2);
  if (c.learned_positions) n += static_cast<double>(d.max_seq_len) * static_cast<double>(d.hidden_size);
  double layers = 0;
  for (const auto& kind : c.layer_kinds()) layers += static_cast<double>(layer_numel.at(kind));
  n += layers;
  const double bytes = 4 * n;
  const double memory = static_cast<double>(::sysconf(_SC_PHYS_PAGES)) * static_cast<double>(::sysconf(_SC_PAGESIZE));
  if (memory <= 0 || bytes <= memory) return;
  const std::string keys = embedding > layers ? keys_sizing(c, static_cast<int64_t>(4 * embedding)) : keys_sizing(c, 0);
  char buf[160];
  std::snprintf(buf, sizeof buf, "%.3g parameters, %.1f GiB in fp32, where this machine has %.1f GiB", n,
                bytes / (1 << 30), memory / (1 << 30));
  throw Error(source + ": building the model needs more memory than this machine has (its weights alone: " + buf +
              "; " + keys + " ask for it)");
}

// trainer.out_dir as run will use it: a folder (or one that can be made), not in use by another run.
void check_out_dir(const std::string& dir) {
  std::error_code ec;
  if (fs::exists(dir, ec)) {
    if (!fs::is_directory(dir, ec))
      throw Error("trainer.out_dir: cannot create '" + dir + "': it exists and is not a folder");
    if (::access(dir.c_str(), W_OK) != 0) throw Error("trainer.out_dir: '" + dir + "' is not writable");
    check_run_folder_free(dir);
    return;
  }
  fs::path up = fs::absolute(dir, ec);
  while (up.has_parent_path() && up != up.parent_path() && !fs::exists(up, ec)) up = up.parent_path();
  if (!fs::is_directory(up, ec) || ::access(up.c_str(), W_OK) != 0)
    throw Error("trainer.out_dir: cannot create '" + dir + "': '" + up.string() + "' is not a writable folder");
}
}  // namespace

std::shared_ptr<LMModel> build_model(const ModelConfig& config, const Registry& registry, const std::string& source) {
  try {
    return std::make_shared<LMModel>(config, registry);
  } catch (const std::exception& e) {
    const int64_t bytes = failed_allocation(e);
    if (bytes < 0) throw;
    out_of_memory(config, bytes, source);
  }
}

std::shared_ptr<Block> build_block(const Registry& registry, const ModelConfig& config, int64_t layer,
                                   const std::string& source) {
  const std::string kind = config.layer_kinds().at(static_cast<size_t>(layer));
  auto params = config.block_params.find(kind);
  if (params == config.block_params.end()) throw Error(source + ": model: no parameters for block '" + kind + "'");
  try {
    return registry.make_block(kind, config.dims, params->second, layer);
  } catch (const std::exception& e) {
    const int64_t bytes = failed_allocation(e);
    if (bytes < 0) throw;
    out_of_memory(config, bytes, source);
  }
}

std::shared_ptr<Task> make_experiment_task(const Experiment& e, const Registry& registry) {
  if (e.task_name.empty())
    throw Error(e.source + ": trainer '" + e.trainer_name + "' needs a task section to draw prompts from, e.g. " +
                "task: {name: arithmetic}; tasks: " + registry.names_text(PluginKind::Task));
  return registry.make_task(e.task_name, e.task);
}

void check_same_tokenizer(const Tokenizer& ckpt, const std::string& file, const Experiment& exp, const Tokenizer& own,
                          const std::string& data_desc) {
  if (&own == &ckpt) {
    // Text data is tokenized with the checkpoint's tokenizer: data.tokenizer must be of its kind.
    const std::string& key = exp.data.tokenizer;
    if ((key == "char") != (ckpt.kind() == "char"))
      throw Error(exp.source + ": data.tokenizer is '" + key + "', but checkpoint " + file + " was trained with the " +
                  ckpt.kind() + " tokenizer; set data.tokenizer to match it, or start a fresh run (another out_dir)");
    return;
  }
  // A prepared folder brings its own tokenizer, which must be the checkpoint's.
  const bool same = ckpt.kind() == own.kind() &&
                    (ckpt.kind() == "char" ? ckpt.to_json() == own.to_json() : ckpt.vocab_size() == own.vocab_size());
  if (!same)
    throw Error(exp.source + ": data.path " + data_desc + " is tokenized with a " + own.kind() + " tokenizer of " +
                std::to_string(own.vocab_size()) + " tokens, but checkpoint " + file + " was trained with a " +
                ckpt.kind() + " tokenizer of " + std::to_string(ckpt.vocab_size()) +
                "; prepare the data with the checkpoint's tokenizer, or start a fresh run (another out_dir)");
}

void preflight(const Experiment& exp, PluginHost& host) {
  const Registry& registry = host.registry();
  check_for_training(exp, registry);
  const at::Device device = resolve_device(exp.run.device);
  compute_dtype(exp, device);
  check_launch(LaunchEnv::from_environment(), exp, device);
  check_out_dir(exp.trainer.out_dir);

  // Where the run would start: the checkpoint's header and metadata, its plugins and tokenizer.
  RunStart start = choose_start(exp, exp.trainer.out_dir, /*header_only=*/true);
  const RunCheckpoint* ck = start.resume_from ? &*start.resume_from : start.init_from ? &*start.init_from : nullptr;
  std::shared_ptr<Tokenizer> tokenizer;
  if (ck) {
    ck->check_plugins(host);
    tokenizer = ck->tokenizer();
  }

  std::shared_ptr<Task> task;
  if (!exp.task_name.empty() || exp.data.path == "task") task = make_experiment_task(exp, registry);
  const std::string task_text =
      exp.data.path == "task"
          ? task->sft_text(exp.task.has("sft_examples") ? exp.task.get_int("sft_examples") : 20000, 0x5f7)
          : "";
  std::string data_desc;
  auto data_tokenizer = preview_data(exp.data, exp.base_dir, tokenizer, task_text, &data_desc);
  if (tokenizer && data_tokenizer) check_same_tokenizer(*tokenizer, ck->file(), exp, *data_tokenizer, data_desc);

  // One layer of each block kind, at the model's real width; the vocabulary is the tokenizer's (a
  // char vocabulary of a file still to download: the largest one, 256).
  const ModelConfig config = exp.model_config(data_tokenizer ? data_tokenizer->vocab_size() : 256);
  const auto kinds = config.layer_kinds();
  std::map<std::string, int64_t> layer_numel;  // by block kind
  std::vector<NamedParameter> params;
  for (size_t i = 0; i < kinds.size(); ++i) {
    if (layer_numel.count(kinds[i])) continue;
    auto block = build_block(registry, config, static_cast<int64_t>(i), exp.source);
    int64_t numel = 0;
    for (const auto& kv : block->named_parameters()) {
      params.push_back({"blocks." + std::to_string(i) + "." + kv.key(), kv.value(), {}, {}});
      numel += kv.value().numel();
    }
    layer_numel[kinds[i]] = numel;
  }
  check_model_fits(config, layer_numel, exp.source);
  registry.make_optimizer(exp.optimizer_name, params, exp.optimizer);  // its own checks (betas...)

  // The samples printed after training: a prompt the vocabulary cannot encode would fail only then.
  if (data_tokenizer && exp.sample.num_samples > 0) check_sample_prompt(exp, *data_tokenizer);
}

}  // namespace linearnexus
