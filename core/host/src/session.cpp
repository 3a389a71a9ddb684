// From a validated experiment to a training run (session.h): where it starts, its data, model,
// optimizer, run folder and ranks.
#include "linearnexus/host/session.h"

#include <nlohmann/json.hpp>
#include <torch/cuda.h>
#include <yaml-cpp/yaml.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <thread>

#include "linearnexus/error.h"
#include "linearnexus/host/data.h"
#include "linearnexus/host/distributed.h"
#include "linearnexus/host/examples.h"
#include "linearnexus/host/plugin_host.h"
#include "linearnexus/host/preflight.h"
#include "linearnexus/host/run_folder.h"
#include "linearnexus/host/runtime.h"
#include "linearnexus/log.h"
#include "linearnexus/task.h"

namespace fs = std::filesystem;

namespace linearnexus {

RunStart choose_start(const Experiment& exp, const std::string& out_dir, bool header_only) {
  RunStart p;
  const std::string& resume = exp.trainer.resume;
  const CheckpointManager checkpoints(out_dir, 0, /*create=*/false);
  const bool has_checkpoints = checkpoints.latest() || !checkpoints.step_files().empty();
  if (resume == "auto") {
    p.resume_from = checkpoints.newest_loadable(header_only);
    if (!p.resume_from && !header_only) log_info("resume: auto found no checkpoint in " + out_dir + "; starting fresh");
  } else if (!resume.empty()) {
    p.resume_from = RunCheckpoint::read(resume, header_only);
  } else if (has_checkpoints) {
    throw Error("trainer.out_dir '" + out_dir + "' already holds checkpoints; set trainer.resume: auto " +
                "(or --set trainer.resume=auto) to continue that run, or choose another out_dir");
  }
  if (!exp.trainer.init_from.empty()) {
    p.init_file = resolve_checkpoint(exp.trainer.init_from);
    if (!p.resume_from) p.init_from = RunCheckpoint::read(p.init_file, header_only);
  }
  return p;
}

namespace {
// Every scalar of a YAML tree under its dotted path; lists as their YAML text.
void flatten(const YAML::Node& n, const std::string& path, std::vector<std::pair<std::string, std::string>>& out) {
  if (n.IsMap()) {
    for (const auto& kv : n) flatten(kv.second, path.empty() ? kv.first.Scalar() : path + "." + kv.first.Scalar(), out);
    return;
  }
  YAML::Emitter e;
  e << YAML::Flow << n;
  out.emplace_back(path, e.c_str());
}

// A split's size and a fingerprint of its tokens (the first and last 4096 and 64 windows of 64
// evenly spaced): the same data on every rank, found without hashing all of it.
std::string fingerprint(const TokenDataset& d) {
  const int64_t n = d.size();
  uint64_t h = 0xcbf29ce484222325ull;
  std::vector<int64_t> buf;
  auto take = [&](int64_t at, int64_t len) {
    at = std::max<int64_t>(0, std::min(at, n));
    len = std::min(len, n - at);
    buf.resize(static_cast<size_t>(std::max<int64_t>(len, 0)));
    if (len > 0) d.read(at, len, buf.data());
    for (int64_t t : buf) h = (h ^ static_cast<uint64_t>(t)) * 0x100000001b3ull;
  };
  take(0, 4096);
  take(n - 4096, 4096);
  for (int64_t i = 1; i <= 64; ++i) take(n * i / 65, 64);
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(h));
  return std::to_string(n) + " tokens, " + hex;
}

// The same for a split of examples: their number and the ids and loss masks of 64 evenly spaced.
std::string fingerprint(const ExampleSet& set) {
  const int64_t n = set.size();
  uint64_t h = 0xcbf29ce484222325ull;
  for (int64_t i = 0; i < std::min<int64_t>(n, 64); ++i)
    for (const Sequence& seq : set.at(n <= 64 ? i : n * i / 64)) {
      for (int64_t t : seq.ids) h = (h ^ static_cast<uint64_t>(t)) * 0x100000001b3ull;
      for (uint8_t m : seq.train) h = (h ^ m) * 0x100000001b3ull;
    }
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(h));
  return std::to_string(n) + " examples, " + hex;
}
}  // namespace

std::vector<std::pair<std::string, std::string>> run_identity(const Experiment& exp, const DataSplits& data,
                                                              const RunCheckpoint* start) {
  std::vector<std::pair<std::string, std::string>> out;
  flatten(YAML::Load(exp.resolved_yaml), "", out);
  out.emplace_back("data (train split)", data.train ? fingerprint(*data.train) : fingerprint(*data.train_examples));
  out.emplace_back("data (validation split)", data.val ? fingerprint(*data.val) : fingerprint(*data.val_examples));
  // The tokenizer by what it does (paths differ between machines): kind, size, a probe's ids.
  std::string probe;
  try {
    for (int64_t id : data.tokenizer->encode("The quick brown fox, 0123456789!\n")) probe += std::to_string(id) + " ";
  } catch (const std::exception&) {
    probe = "(cannot encode)";
  }
  out.emplace_back("tokenizer",
                   data.tokenizer->kind() + " of " + std::to_string(data.tokenizer->vocab_size()) + ": " + probe);
  std::error_code ec;
  out.emplace_back("start checkpoint", start ? "step " + std::to_string(start->step()) + " of " +
                                                   fs::path(start->file()).filename().string() + " (" +
                                                   std::to_string(fs::file_size(start->file(), ec)) + " bytes)"
                                             : "none");
  return out;
}

void check_sample_prompt(const Experiment& exp, const Tokenizer& tokenizer) {
  try {
    if (exp.sample.chat) {  // as print_samples renders it: a user message in the chat template
      nlohmann::json row;
      row["messages"] = nlohmann::json::array({nlohmann::json{{"role", "user"}, {"content", exp.sample.prompt}}});
      tokenizer.encode(render_chat(tokenizer, row.dump(), true, "sample.prompt (sample.chat)").text);
      return;
    }
    tokenizer.encode(exp.sample.prompt);
  } catch (const std::exception& e) {
    throw Error(exp.source + ": sample.prompt cannot be encoded with the run's " + tokenizer.kind() + " tokenizer (" +
                error_text(e) + "); change sample.prompt, or set sample.num_samples: 0");
  }
}

namespace {
// Data parallelism: launched with torchrun's environment (or `run --nproc N`), one rank each.
void join_ranks(const Experiment& exp, RunParts& p) {
  const LaunchEnv env = LaunchEnv::from_environment();
  check_launch(env, exp, p.device);
  if (!env.distributed()) return;
  if (p.device.is_cuda()) p.device = at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(env.local_rank));
  p.dist = std::make_shared<Distributed>(env, exp.distributed.backend, exp.distributed.timeout_sec, p.device);
  p.rank = env.rank;
  p.world_size = env.world_size;
  // Ranks on one machine share its cores: each takes its share of intra-op threads (all of them
  // each oversubscribes the CPU, and spinning OpenMP threads then slow every rank's host side).
  // A thread count set by a variable is each rank's own (torchrun sets OMP_NUM_THREADS=1).
  if (thread_choice().source.empty()) {
    const int64_t local =
        std::max<int64_t>(1, std::atoll(std::getenv("LOCAL_WORLD_SIZE") ? std::getenv("LOCAL_WORLD_SIZE") : "1"));
    at::set_num_threads(static_cast<int>(std::max<int64_t>(1, thread_choice().threads / local)));
  }
  if (env.rank != 0) set_log_level("warn");  // one progress log: rank 0's
}
}  // namespace

std::unique_ptr<HostTrainingRun> prepare_run(const Experiment& exp, PluginHost& host) {
  check_for_training(exp, host.registry());
  RunParts p;
  p.experiment = &exp;
  p.host = &host;
  torch::manual_seed(exp.run.seed);
  p.device = resolve_device(exp.run.device);
  const at::ScalarType compute = compute_dtype(exp, p.device);
  join_ranks(exp, p);

  p.out_dir = exp.trainer.out_dir;
  p.folder = std::make_shared<RunFolder>(p.out_dir, p.rank == 0);  // rank 0 writes the folder

  // A resumed or init_from run (SFT -> RL) keeps its checkpoint's tokenizer: token ids stay the same.
  RunStart start = choose_start(exp, p.out_dir, /*header_only=*/false);
  p.resume_from = std::move(start.resume_from);
  p.init_from = std::move(start.init_from);
  p.init_file = start.init_file;
  const RunCheckpoint* ck = p.resume_from ? &*p.resume_from : p.init_from ? &*p.init_from : nullptr;
  std::shared_ptr<Tokenizer> tokenizer;
  if (ck) {
    ck->check_plugins(host);
    tokenizer = ck->tokenizer();
  }
  std::string task_text;
  if (exp.data.path == "task") {
    // The task's worked examples (its own seed stream, fixed so every stage sees the same text).
    auto task = make_experiment_task(exp, host.registry());
    task_text = task->sft_text(exp.task.has("sft_examples") ? exp.task.get_int("sft_examples") : 20000, 0x5f7);
  }
  p.data = load_data(exp.data, exp.base_dir, tokenizer, task_text);
  if (tokenizer) check_same_tokenizer(*tokenizer, ck->file(), exp, *p.data.tokenizer, p.data.describe());
  if (p.dist) {
    // Every rank must run the same experiment on the same data from the same checkpoint: compared
    // before the first collective that depends on them (a model of another width would end both
    // ranks inside Gloo). Each rank refuses naming the first key that differs.
    p.dist->agree(run_identity(exp, p.data, ck), "experiment");
  }
  // The run keeps its tokenizer's files in its folder, and its checkpoints name them there: a copy of
  // the folder reads its own (rank 0 writes the folder).
  if (p.rank == 0) p.data.tokenizer = keep_tokenizer_files(p.data.tokenizer, p.out_dir, "tokenizer");

  p.model = build_model(exp.model_config(p.data.tokenizer->vocab_size()), host.registry(), exp.source);
  p.model->to(p.device);
  p.model->set_compute_dtype(compute);
  p.model->set_activation_checkpointing(exp.trainer.activation_checkpoint_every);
  p.params = p.model->optimizer_parameters();
  if (p.dist) {
    // Every rank starts from rank 0's weights (the same seed makes them equal already; this makes
    // it a guarantee), then each averages its gradients with the others' every step.
    std::vector<at::Tensor> weights;
    for (const auto& np : p.params) weights.push_back(np.param.detach());
    p.dist->broadcast(weights);
  }
  p.optimizer = host.registry().make_optimizer(exp.optimizer_name, p.params, exp.optimizer);
  return std::make_unique<HostTrainingRun>(std::move(p));
}

}  // namespace linearnexus
