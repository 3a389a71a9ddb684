// From a validated experiment (or a checkpoint) to live model, data and optimizer.
#include "linearnexus/session.h"

#include <fcntl.h>
#include <malloc.h>
#include <torch/cuda.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <nlohmann/json.hpp>

#include <cstdlib>
#include <filesystem>
#include <sstream>
#include <thread>

#include "linearnexus/distributed.h"
#include "linearnexus/error.h"
#include "linearnexus/log.h"
#include "linearnexus/plugin_host.h"
#include "linearnexus/task.h"
#include "json_limits.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace linearnexus {

void init_runtime() {
  mallopt(M_MMAP_THRESHOLD, 1 << 30);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  mallopt(M_TOP_PAD, 256 << 20);
  int n = static_cast<int>(std::thread::hardware_concurrency());
  if (const char* env = std::getenv("LINEARNEXUS_NUM_THREADS")) n = std::atoi(env);
  if (n > 0) at::set_num_threads(n);
}

at::Device resolve_device(const std::string& device) {
  if (device != "cpu" && device != "cuda" && device != "auto")
    throw Error("device must be cpu, cuda or auto (got '" + device + "')");
  if (device == "cpu") return at::kCPU;
  const bool cuda = at::hasCUDA();
  if (device == "cuda" && !cuda)
    throw Error("device: cuda was asked for, but this LibTorch sees no CUDA device (a CPU-only build, or no GPU/driver "
                "here); use device: cpu or device: auto");
  return cuda ? at::Device(at::kCUDA) : at::Device(at::kCPU);
}

at::ScalarType compute_dtype(const Experiment& exp, const at::Device& device) {
  if (exp.top.get_string("precision") != "bf16") return at::kFloat;
  if (!device.is_cuda())
    throw Error(exp.source + ": precision: bf16 needs a CUDA device (device is " + device.str() +
                " here); use precision: fp32 on the CPU");
  return at::kBFloat16;
}

std::shared_ptr<void> lock_run_folder(const std::string& dir) {
  const std::string path = (fs::path(dir) / ".lock").string();
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) throw Error("trainer.out_dir: cannot create the lock file '" + path + "': " + std::strerror(errno));
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    char buf[32] = {0};
    const ssize_t n = ::pread(fd, buf, sizeof buf - 1, 0);
    ::close(fd);
    const std::string pid = n > 0 ? std::string(buf, static_cast<size_t>(n)) : "unknown";
    throw Error("trainer.out_dir '" + dir + "' is in use by another run (pid " + pid.substr(0, pid.find('\n')) +
                "); wait for it to end, or give this run another out_dir");
  }
  // The holder's pid, for the message above (the lock itself is the flock: it ends with the process).
  const std::string pid = std::to_string(::getpid()) + "\n";
  if (::ftruncate(fd, 0) != 0 || ::pwrite(fd, pid.data(), pid.size(), 0) < 0) {
    // Only the message would lack the pid; the lock holds.
  }
  return std::shared_ptr<void>(nullptr, [fd](void*) { ::close(fd); });
}

std::vector<NamedParameter> named_parameters_of(const LMModel& model) {
  std::vector<NamedParameter> out;
  std::map<std::string, std::vector<int64_t>> splits;
  for (size_t i = 0; i < model.blocks().size(); ++i)
    for (const auto& [name, rows] : model.blocks()[i]->fused_splits())
      splits["blocks." + std::to_string(i) + "." + name] = rows;
  const auto roles = model.parameter_roles();
  for (const auto& kv : model.named_parameters()) {
    NamedParameter np{kv.key(), kv.value(), {}, {}};
    if (auto it = splits.find(kv.key()); it != splits.end()) np.split_rows = it->second;
    if (auto it = roles.find(kv.key()); it != roles.end()) np.role = it->second;
    out.push_back(np);
  }
  return out;
}

std::string RunSetup::describe() const {
  std::ostringstream o;
  const auto& c = ctx.model->config();
  o << "model: " << c.dims.n_layer << " layers [";
  for (size_t i = 0; i < c.block_pattern.size(); ++i) o << (i ? ", " : "") << c.block_pattern[i];
  o << "], hidden " << c.dims.hidden_size << ", vocab " << c.dims.vocab_size << ", "
    << static_cast<double>(ctx.model->num_parameters()) / 1e6 << "M parameters (" << ctx.model->num_parameters()
    << ") on " << ctx.device.str() << "\n  data: " << ctx.data.train->size() << " train tokens, "
    << ctx.data.val->size() << " validation tokens (" << ctx.data.tokenizer->kind() << " tokenizer, vocab "
    << ctx.data.tokenizer->vocab_size() << ")\n  optimizer: " << ctx.experiment->optimizer_name << ": "
    << ctx.optimizer->describe_groups() << "\n  run folder: " << ctx.out_dir;
  return o.str();
}

Metadata checkpoint_metadata(const LMModel& model, const Registry& registry, const std::string& config_yaml,
                             const Tokenizer& tokenizer, int64_t step) {
  // Which plugin (and version) made each piece of the model, for checks when loading elsewhere.
  json plugins = json::object();
  for (const auto& kind : model.config().block_pattern)
    if (const auto* r = registry.find(PluginKind::Block, kind))
      plugins["block:" + kind] = {{"plugin", r->origin.plugin_name}, {"version", r->origin.plugin_version}};
  return {{"format", "linearnexus-checkpoint-1"},
          {"step", std::to_string(step)},
          {"config", config_yaml},
          {"tokenizer", tokenizer.to_json()},
          {"plugins", plugins.dump()}};
}

std::shared_ptr<Tokenizer> checkpoint_tokenizer(const Metadata& metadata, const std::string& file) {
  try {
    // A tokenizer file it names (an imported model's tokenizer.json) may sit beside the checkpoint.
    return tokenizer_from_json(checkpoint_entry(metadata, "tokenizer", file), fs::path(file).parent_path().string());
  } catch (const Error& e) {
    if (std::string(e.what()).rfind("checkpoint ", 0) == 0) throw;
    throw Error("checkpoint " + file + ": metadata 'tokenizer': " + e.what());
  }
}

namespace {
// A resumed or init_from run must see the token ids its checkpoint was trained on. Text data is
// tokenized with the checkpoint's tokenizer, so the experiment's data.tokenizer must at least be of
// its kind; a prepared folder brings its own tokenizer, which must be the checkpoint's.
void check_same_tokenizer(const Tokenizer& ckpt, const std::string& file, const Experiment& exp, const DataSplits& data) {
  if (data.tokenizer.get() == &ckpt) {
    const std::string& key = exp.data.get_string("tokenizer");
    if ((key == "char") != (ckpt.kind() == "char"))
      throw Error(exp.source + ": data.tokenizer is '" + key + "', but checkpoint " + file + " was trained with the " +
                  ckpt.kind() + " tokenizer; set data.tokenizer to match it, or start a fresh run (another out_dir)");
    return;
  }
  const Tokenizer& own = *data.tokenizer;
  const bool same = ckpt.kind() == own.kind() &&
                    (ckpt.kind() == "char" ? ckpt.to_json() == own.to_json() : ckpt.vocab_size() == own.vocab_size());
  if (!same)
    throw Error(exp.source + ": data.path " + data.train->describe() + " is tokenized with a " + own.kind() +
                " tokenizer of " + std::to_string(own.vocab_size()) + " tokens, but checkpoint " + file +
                " was trained with a " + ckpt.kind() + " tokenizer of " + std::to_string(ckpt.vocab_size()) +
                "; prepare the data with the checkpoint's tokenizer, or start a fresh run (another out_dir)");
}
}  // namespace

RunSetup prepare_run(const Experiment& exp, PluginHost& host) {
  check_for_training(exp, host.registry());
  RunSetup s;
  auto& ctx = s.ctx;
  ctx.experiment = &exp;
  ctx.host = &host;
  torch::manual_seed(static_cast<uint64_t>(exp.top.get_int("seed")));
  ctx.device = resolve_device(exp.top.get_string("device"));
  const at::ScalarType compute = compute_dtype(exp, ctx.device);
  // Data parallelism: launched with torchrun's environment (or `run --nproc N`), one rank each.
  if (const LaunchEnv env = LaunchEnv::from_environment(); env.distributed()) {
    if (ctx.device.is_cuda()) {
      if (env.local_rank >= static_cast<int64_t>(torch::cuda::device_count()))
        throw Error("launch: LOCAL_RANK " + std::to_string(env.local_rank) + " but this machine has " +
                    std::to_string(torch::cuda::device_count()) + " GPU(s): start at most one rank per GPU");
      ctx.device = at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(env.local_rank));
    }
    const Params& d = exp.distributed;
    ctx.dist = std::make_shared<Distributed>(env, d.get_string("backend"), d.get_float("timeout_sec"), ctx.device);
    ctx.rank = env.rank;
    ctx.world_size = env.world_size;
    // Ranks on one machine share its cores: each takes its share of intra-op threads (all of them
    // each oversubscribes the CPU, and spinning OpenMP threads then slow every rank's host side).
    if (!std::getenv("LINEARNEXUS_NUM_THREADS")) {
      const int64_t local = std::max<int64_t>(1, std::atoll(std::getenv("LOCAL_WORLD_SIZE") ? std::getenv("LOCAL_WORLD_SIZE") : "1"));
      at::set_num_threads(static_cast<int>(std::max<int64_t>(1, std::thread::hardware_concurrency() / local)));
    }
    if (env.rank != 0) set_log_level("warn");  // one progress log: rank 0's
  }

  ctx.out_dir = exp.trainer.get_string("out_dir");
  if (ctx.out_dir.empty()) ctx.out_dir = (fs::path("runs") / exp.top.get_string("name")).string();
  std::error_code ec;
  fs::create_directories(ctx.out_dir, ec);
  if (ec) throw Error("trainer.out_dir: cannot create '" + ctx.out_dir + "': " + ec.message());
  if (ctx.rank == 0) s.folder_lock = lock_run_folder(ctx.out_dir);  // rank 0 writes the folder

  // Where the run starts, decided here once; when resuming (or starting from another run's weights,
  // trainer.init_from: SFT -> RL), the checkpoint's tokenizer keeps token ids identical.
  const std::string resume = exp.trainer.get_string("resume");
  const CheckpointManager checkpoints(ctx.out_dir, 0);
  const bool has_checkpoints = checkpoints.latest() || !checkpoints.step_files().empty();
  if (resume == "auto") {
    if (auto loadable = checkpoints.newest_loadable()) ctx.resume_file = *loadable;
    else log_info("resume: auto found no checkpoint in " + ctx.out_dir + "; starting fresh");
  } else if (!resume.empty()) {
    ctx.resume_file = resolve_checkpoint(resume);
  } else if (has_checkpoints) {
    throw Error("trainer.out_dir '" + ctx.out_dir + "' already holds checkpoints; set trainer.resume: auto " +
                "(or --set trainer.resume=auto) to continue that run, or choose another out_dir");
  }
  const std::string init_from = exp.trainer.get_string("init_from");
  if (ctx.resume_file.empty() && !init_from.empty()) ctx.init_file = resolve_checkpoint(init_from);
  std::shared_ptr<Tokenizer> tokenizer;
  const std::string& from = ctx.resume_file.empty() ? ctx.init_file : ctx.resume_file;
  if (!from.empty()) {
    auto meta = read_safetensors_metadata(from);
    check_checkpoint_plugins(meta, from, host);
    tokenizer = checkpoint_tokenizer(meta, from);
  }
  std::string task_text;
  if (exp.data.get_string("path") == "task") {
    // The task's worked examples (its own seed stream, fixed so every stage sees the same text).
    auto task = host.registry().make_task(exp.task_name, exp.task);
    task_text = task->sft_text(exp.task.has("sft_examples") ? exp.task.get_int("sft_examples") : 20000, 0x5f7);
  }
  ctx.data = load_data(exp.data, exp.base_dir, tokenizer, task_text);
  if (tokenizer) check_same_tokenizer(*tokenizer, from, exp, ctx.data);

  ModelConfig mc = exp.model_config(ctx.data.tokenizer->vocab_size());
  ctx.model = std::make_shared<LMModel>(mc, host.registry());
  ctx.model->to(ctx.device);
  ctx.model->set_compute_dtype(compute);
  ctx.model->set_activation_checkpointing(activation_checkpoint_every(exp));
  ctx.params = named_parameters_of(*ctx.model);
  if (ctx.dist) {
    // Every rank starts from rank 0's weights (the same seed makes them equal already; this makes
    // it a guarantee), then each averages its gradients with the others' every step.
    std::vector<at::Tensor> weights;
    for (const auto& p : ctx.params) weights.push_back(p.param.detach());
    ctx.dist->broadcast(weights);
    ctx.grad_sync = std::make_shared<GradientSync>(ctx.dist, ctx.params, exp.distributed.get_float("bucket_mb"));
  }
  ctx.optimizer = host.registry().make_optimizer(exp.optimizer_name, ctx.params, exp.optimizer);
  return s;
}

// The plugins that built a checkpoint's model (its "plugins" metadata) must be loaded; the same
// version is expected, another one only warns.
void check_checkpoint_plugins(const Metadata& metadata, const std::string& file, const PluginHost& host) {
  if (!metadata.count("plugins")) return;
  json plugins;
  try {
    plugins = parse_json_limited(metadata.at("plugins"), 2);
  } catch (const std::exception& e) {
    plugins = nullptr;
  }
  auto text = [](const json& j, const char* key) {
    auto it = j.find(key);
    return it != j.end() && it->is_string() ? it->get<std::string>() : std::string();
  };
  for (auto it = plugins.begin(); plugins.is_object() && it != plugins.end(); ++it)
    if (!it->is_object() || text(*it, "plugin").empty() || text(*it, "version").empty()) plugins = nullptr;
  if (!plugins.is_object())
    throw Error("checkpoint " + file + ": metadata 'plugins' is not a map of {plugin, version} entries; the file is "
                "corrupt or edited: use another checkpoint of the run");
  for (auto it = plugins.begin(); it != plugins.end(); ++it) {
    const std::string block = it.key().substr(it.key().find(':') + 1);
    const std::string plugin = text(*it, "plugin"), version = text(*it, "version");
    const auto* r = host.registry().find(PluginKind::Block, block);
    if (!r)
      throw Error("checkpoint '" + file + "' needs block '" + block + "' from plugin '" + plugin + "' " + version +
                  ", which is not on the plugin path (" + host.search_path_text() +
                  "); add its folder to LINEARNEXUS_PLUGIN_PATH");
    if (r->origin.plugin_version != version)
      log_warn("checkpoint '" + file + "' was made with plugin '" + plugin + "' " + version + ", loading it with " +
               r->origin.plugin_version + " from " + r->origin.file);
  }
}

LoadedModel load_model_from_checkpoint(const std::string& run_dir_or_file, PluginHost& host, const std::string& device) {
  LoadedModel lm;
  lm.file = resolve_checkpoint(run_dir_or_file);
  auto ck = load_safetensors(lm.file);
  lm.metadata = ck.metadata;
  // A checkpoint is data: the plugins.paths its experiment lists are never loaded (that would run
  // any .so a downloaded file points at); its blocks must come from the host's own plugin folders.
  check_checkpoint_plugins(ck.metadata, lm.file, host);
  lm.experiment = parse_experiment(checkpoint_entry(ck.metadata, "config", lm.file), "checkpoint " + lm.file, "", {},
                                   host, PluginPaths::Ignore);
  lm.tokenizer = checkpoint_tokenizer(ck.metadata, lm.file);
  lm.model = std::make_shared<LMModel>(lm.experiment.model_config(lm.tokenizer->vocab_size()), host.registry());
  load_model_tensors(*lm.model, ck.tensors, lm.file);
  const at::Device dev = resolve_device(device);
  lm.model->to(dev);
  // Sampling on a GPU keeps the precision the model trained in; on the CPU it is fp32.
  if (dev.is_cuda()) lm.model->set_compute_dtype(compute_dtype(lm.experiment, dev));
  lm.model->eval();
  return lm;
}

}  // namespace linearnexus
