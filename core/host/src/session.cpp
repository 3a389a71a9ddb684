// From a validated experiment to a training run (session.h): where it starts, its data, model,
// optimizer, run folder and ranks.
#include "linearnexus/host/session.h"

#include <torch/cuda.h>

#include <cstdlib>
#include <filesystem>
#include <thread>

#include "linearnexus/error.h"
#include "linearnexus/host/distributed.h"
#include "linearnexus/host/plugin_host.h"
#include "linearnexus/host/runtime.h"
#include "linearnexus/log.h"
#include "linearnexus/task.h"

namespace fs = std::filesystem;

namespace linearnexus {

namespace {
// A resumed or init_from run must see the token ids its checkpoint was trained on. Text data is
// tokenized with the checkpoint's tokenizer, so the experiment's data.tokenizer must at least be of
// its kind; a prepared folder brings its own tokenizer, which must be the checkpoint's.
void check_same_tokenizer(const Tokenizer& ckpt, const std::string& file, const Experiment& exp, const DataSplits& data) {
  if (data.tokenizer.get() == &ckpt) {
    const std::string& key = exp.data.tokenizer;
    if ((key == "char") != (ckpt.kind() == "char"))
      throw Error(exp.source + ": data.tokenizer is '" + key + "', but checkpoint " + file + " was trained with the " +
                  ckpt.kind() + " tokenizer; set data.tokenizer to match it, or start a fresh run (another out_dir)");
    return;
  }
  const Tokenizer& own = *data.tokenizer;
  const bool same = ckpt.kind() == own.kind() &&
                    (ckpt.kind() == "char" ? ckpt.to_json() == own.to_json() : ckpt.vocab_size() == own.vocab_size());
  if (!same)
    throw Error(exp.source + ": data.path " + data.describe() + " is tokenized with a " + own.kind() +
                " tokenizer of " + std::to_string(own.vocab_size()) + " tokens, but checkpoint " + file +
                " was trained with a " + ckpt.kind() + " tokenizer of " + std::to_string(ckpt.vocab_size()) +
                "; prepare the data with the checkpoint's tokenizer, or start a fresh run (another out_dir)");
}


// Where the run starts, decided here once: trainer.resume (auto: out_dir's newest loadable
// checkpoint; a path: that one) continues a run; else trainer.init_from starts a fresh one from a
// checkpoint's weights; else random initialisation. The chosen checkpoint is read once, here.
void choose_start(const Experiment& exp, RunParts& p) {
  const std::string& resume = exp.trainer.resume;
  const CheckpointManager checkpoints(p.out_dir, 0);
  const bool has_checkpoints = checkpoints.latest() || !checkpoints.step_files().empty();
  if (resume == "auto") {
    p.resume_from = checkpoints.newest_loadable();
    if (!p.resume_from) log_info("resume: auto found no checkpoint in " + p.out_dir + "; starting fresh");
  } else if (!resume.empty()) {
    p.resume_from = RunCheckpoint::read(resume);
  } else if (has_checkpoints) {
    throw Error("trainer.out_dir '" + p.out_dir + "' already holds checkpoints; set trainer.resume: auto " +
                "(or --set trainer.resume=auto) to continue that run, or choose another out_dir");
  }
  if (!exp.trainer.init_from.empty()) {
    p.init_file = resolve_checkpoint(exp.trainer.init_from);
    if (!p.resume_from) p.init_from = RunCheckpoint::read(p.init_file);
  }
}

// Data parallelism: launched with torchrun's environment (or `run --nproc N`), one rank each.
void join_ranks(const Experiment& exp, RunParts& p) {
  const LaunchEnv env = LaunchEnv::from_environment();
  if (!env.distributed()) return;
  if (p.device.is_cuda()) {
    if (env.local_rank >= static_cast<int64_t>(torch::cuda::device_count()))
      throw Error("launch: LOCAL_RANK " + std::to_string(env.local_rank) + " but this machine has " +
                  std::to_string(torch::cuda::device_count()) + " GPU(s): start at most one rank per GPU");
    p.device = at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(env.local_rank));
  }
  p.dist = std::make_shared<Distributed>(env, exp.distributed.backend, exp.distributed.timeout_sec, p.device);
  p.rank = env.rank;
  p.world_size = env.world_size;
  // Ranks on one machine share its cores: each takes its share of intra-op threads (all of them
  // each oversubscribes the CPU, and spinning OpenMP threads then slow every rank's host side).
  if (!std::getenv("LINEARNEXUS_NUM_THREADS")) {
    const int64_t local = std::max<int64_t>(1, std::atoll(std::getenv("LOCAL_WORLD_SIZE") ? std::getenv("LOCAL_WORLD_SIZE") : "1"));
    at::set_num_threads(static_cast<int>(std::max<int64_t>(1, std::thread::hardware_concurrency() / local)));
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
  std::error_code ec;
  fs::create_directories(p.out_dir, ec);
  if (ec) throw Error("trainer.out_dir: cannot create '" + p.out_dir + "': " + ec.message());
  if (p.rank == 0) p.folder_lock = lock_run_folder(p.out_dir);  // rank 0 writes the folder

  // A resumed or init_from run (SFT -> RL) keeps its checkpoint's tokenizer: token ids stay the same.
  choose_start(exp, p);
  const RunCheckpoint* start = p.resume_from ? &*p.resume_from : p.init_from ? &*p.init_from : nullptr;
  std::shared_ptr<Tokenizer> tokenizer;
  if (start) {
    start->check_plugins(host);
    tokenizer = start->tokenizer();
  }
  std::string task_text;
  if (exp.data.path == "task") {
    // The task's worked examples (its own seed stream, fixed so every stage sees the same text).
    auto task = host.registry().make_task(exp.task_name, exp.task);
    task_text = task->sft_text(exp.task.has("sft_examples") ? exp.task.get_int("sft_examples") : 20000, 0x5f7);
  }
  p.data = load_data(exp.data, exp.base_dir, tokenizer, task_text);
  if (tokenizer) check_same_tokenizer(*tokenizer, start->file(), exp, p.data);

  p.model = std::make_shared<LMModel>(exp.model_config(p.data.tokenizer->vocab_size()), host.registry());
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
