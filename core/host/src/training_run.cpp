// The host's training run (training_run.h): the schedule, the step's update, metrics, evaluation,
// checkpoints and exact resume, shared by every trainer.
#include "linearnexus/host/training_run.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>

#include "linearnexus/compat.h"
#include "linearnexus/error.h"
#include "linearnexus/host/data.h"
#include "linearnexus/host/distributed.h"
#include "linearnexus/host/examples.h"
#include "linearnexus/host/generator.h"
#include "linearnexus/host/plugin_host.h"
#include "linearnexus/host/preflight.h"
#include "linearnexus/host/run_folder.h"
#include "linearnexus/host/run_log.h"
#include "linearnexus/host/runtime.h"
#include "linearnexus/log.h"
#include "linearnexus/loss.h"
#include "linearnexus/task.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace linearnexus {

at::Tensor to_device(const at::Tensor& t, const at::Device& device) {
  if (!device.is_cuda() || t.device() == device) return t.to(device);
  return t.pin_memory().to(device, /*non_blocking=*/true);
}

double lr_multiplier(int64_t step, int64_t warmup, int64_t max_steps, const std::string& decay, double min_ratio) {
  if (warmup > 0 && step < warmup) return static_cast<double>(step + 1) / static_cast<double>(warmup);
  if (decay == "constant" || max_steps <= warmup) return 1.0;
  double progress = static_cast<double>(step - warmup) / static_cast<double>(max_steps - warmup);
  progress = std::min(1.0, std::max(0.0, progress));
  double shape = decay == "linear" ? 1.0 - progress : 0.5 * (1.0 + std::cos(M_PI * progress));
  return min_ratio + (1.0 - min_ratio) * shape;
}

at::Tensor clip_grad_norm(const std::vector<NamedParameter>& params, double max_norm) {
  std::vector<at::Tensor> grads;
  for (const auto& p : params)
    if (p.param.grad().defined()) grads.push_back(p.param.grad());
  if (grads.empty()) return at::zeros({});
#if LINEARNEXUS_HAS_MULTI_TENSOR_OPS
  // On CUDA, fp32 gradients: multi-tensor launches (one norm pass, one scaling pass) instead of a
  // norm and a multiply kernel per tensor, as torch.nn.utils.clip_grad_norm_(foreach=True).
  const bool multi = std::all_of(grads.begin(), grads.end(), [&](const at::Tensor& t) {
    return t.is_cuda() && t.scalar_type() == at::kFloat && t.device() == grads.front().device();
  });
  if (multi) {
    auto total = at::stack(at::_foreach_norm(grads, 2)).norm();
    if (max_norm > 0) at::_foreach_mul_(grads, (max_norm / (total + 1e-6)).clamp_max(1.0));
    return total;
  }
#endif
  std::vector<at::Tensor> norms;
  for (const auto& g : grads) norms.push_back(g.detach().to(at::kFloat).norm().reshape({1}));
  auto total = at::cat(norms).norm();
  if (max_norm > 0) {
    // Multiply by min(1, max/total) always: no branch on the value, so no device sync.
    auto coef = (max_norm / (total + 1e-6)).clamp_max(1.0);
    for (auto& g : grads) g.mul_(coef.to(g.scalar_type()));
  }
  return total;
}

namespace {
// Training FLOPs per token of `m` on sequences of T tokens (the nanoGPT / PaLM convention): 6 per
// matmul weight (2 forward, 4 backward), i.e. every parameter but an untied input embedding (a
// tied one is the LM head's matmul) and the norms' and biases' vectors (ignored: < 0.1%); plus what
// each block's registration says its layer does beyond its weights (BlockHooks::extra_flops_per_token:
// attention's scores and weighted sum, 12 C T counted as full T x T).
double training_flops_per_token(const LMModel& m, const Registry& registry, int64_t T) {
  const auto& c = m.config();
  double n = static_cast<double>(m.num_parameters());
  if (!c.tie_embeddings) n -= static_cast<double>(c.dims.vocab_size * c.dims.hidden_size);
  double extra = 0;
  for (const auto& kind : m.block_kinds()) {
    const Registration* r = registry.find(PluginKind::Block, kind);
    if (r && r->hooks.extra_flops_per_token)
      extra += r->hooks.extra_flops_per_token(c.dims, c.block_params.at(kind), T);
  }
  return 6.0 * n + extra;
}

// The bf16 matmul rate of `device` in FLOP/s: 8192^3 on random operands, 3 warm-up + 10 timed calls
// (~25 ms on an H100-class GPU); what "peak" means in the logged mfu unless trainer.peak_tflops says.
double measured_matmul_flops(const at::Device& device) {
  const int64_t n = 8192;
  auto o = at::TensorOptions().dtype(at::kBFloat16).device(device);
  auto a = at::randn({n, n}, o), b = at::randn({n, n}, o), c = at::empty({n, n}, o);
  for (int i = 0; i < 3; ++i) at::mm_out(c, a, b);
  c.sum().item<float>();  // waits for the GPU
  const auto t0 = std::chrono::steady_clock::now();
  const int iters = 10;
  for (int i = 0; i < iters; ++i) at::mm_out(c, a, b);
  c.sum().item<float>();
  const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return 2.0 * n * n * n * iters / sec;
}
}  // namespace

HostTrainingRun::HostTrainingRun(RunParts parts) : p_(std::move(parts)) {
  const TrainerSettings& t = settings();
  last_step_ = t.stop_after > 0 ? std::min(t.max_steps, t.stop_after) : t.max_steps;
  ckpt_ = std::make_unique<CheckpointManager>(p_.out_dir, t.keep_last_n);
  std::shared_ptr<GradientSync> sync;
  if (p_.dist) sync = std::make_shared<GradientSync>(p_.dist, p_.params, p_.experiment->distributed.bucket_mb);
  groups_.push_back({"", p_.model.get(), p_.params, p_.optimizer, sync});
  if (p_.device.is_cuda()) {
    flops_per_token_ = training_flops_per_token(*p_.model, p_.host->registry(), seq_len());
    peak_flops_ = t.peak_tflops > 0 ? t.peak_tflops * 1e12 : measured_matmul_flops(p_.device);
    if (is_main())
      log_info("mfu: " + std::to_string(static_cast<int64_t>(flops_per_token_ / 1e6)) + " MFLOP per token against " +
               std::to_string(static_cast<int64_t>(peak_flops_ / 1e12)) + " TFLOP/s per GPU (" +
               (t.peak_tflops > 0 ? "trainer.peak_tflops" : "bf16 8192^3 matmul measured at startup") + ")");
  }
  log_ = std::make_unique<RunLog>(*p_.experiment, p_.out_dir, is_main());
  t_start_ = t_last_log_ = std::chrono::steady_clock::now();
}

HostTrainingRun::~HostTrainingRun() = default;

// ---- what is trained --------------------------------------------------------------------------------

void HostTrainingRun::add_trainable(const std::string& name, torch::nn::Module& tensors,
                                    std::vector<NamedParameter> params, std::shared_ptr<Optimizer> optimizer) {
  if (name.empty() || name.find('.') != std::string::npos)
    throw Error("add_trainable: the group name must be non-empty and without '.' (got '" + name + "')");
  for (const auto& g : groups_)
    if (g.name == name) throw Error("add_trainable: a group '" + name + "' was added already");
  std::shared_ptr<GradientSync> sync;
  if (p_.dist) {
    // Every rank starts from rank 0's values, then averages the group's gradients with the others'.
    std::vector<at::Tensor> weights;
    for (const auto& kv : tensors.named_parameters()) weights.push_back(kv.value().detach());
    p_.dist->broadcast(weights);
    sync = std::make_shared<GradientSync>(p_.dist, params, p_.experiment->distributed.bucket_mb);
  }
  groups_.push_back({name, &tensors, std::move(params), std::move(optimizer), sync});
}

std::shared_ptr<Optimizer> HostTrainingRun::make_optimizer(const std::vector<NamedParameter>& params) {
  return p_.host->registry().make_optimizer(p_.experiment->optimizer_name, params, p_.experiment->optimizer);
}

std::shared_ptr<Task> HostTrainingRun::task() { return make_experiment_task(*p_.experiment, p_.host->registry()); }

std::shared_ptr<LMModel> HostTrainingRun::load_model(const std::string& checkpoint, bool trainable) {
  RunCheckpoint ck = RunCheckpoint::read(checkpoint);
  auto m = build_model(p_.model->config(), p_.host->registry(), "checkpoint " + ck.file());
  ck.load_model(*m);
  m->to(p_.device);
  m->set_compute_dtype(p_.model->compute_dtype());
  if (!trainable) {
    m->eval();
    for (auto& p : m->parameters()) p.set_requires_grad(false);
  }
  return m;
}

std::unique_ptr<Generator> HostTrainingRun::make_generator(const LMModel& model) {
  return std::make_unique<DecodeGenerator>(model, p_.host->registry());
}

// ---- resume and save --------------------------------------------------------------------------------

int64_t HostTrainingRun::resume() {
  start_step_ = 0;
  std::string resumed_config;
  if (p_.resume_from) {
    const RunCheckpoint& ck = *p_.resume_from;
    ck.load_model(*p_.model);
    start_step_ = ck.step();
    std::vector<std::string> extra_groups;
    for (const auto& g : groups_)
      if (!g.name.empty()) extra_groups.push_back(g.name);
    ck.check_extra_groups(extra_groups);
    for (auto& g : groups_) {
      if (!g.name.empty()) {
        if (!ck.has_extra(g.name))
          throw Error("checkpoint " + ck.file() + " has no 'extra." + g.name + ".*' tensors, which trainer '" +
                      p_.experiment->trainer_name + "' keeps there; was it saved by another trainer?");
        ck.load_extra(g.name, *g.tensors);
      }
      ck.load_optimizer(*g.optimizer, p_.device, g.name);
    }
    ck.restore_rng(p_.device);
    lora_base_ = ck.lora_base();
    resumed_config = ck.config_yaml();
    log_info("resumed from " + ck.file() + " at step " + std::to_string(start_step_));
  } else if (p_.init_from) {
    // A fresh run from another run's weights: the model only, new optimizers and step 0.
    p_.init_from->load_model(*p_.model);
    log_info("initialised the model from " + p_.init_from->file());
    // Adapters on frozen weights: record whose (a LoRA run's own base when continuing one).
    if (p_.model->lora()) {
      lora_base_ = p_.init_from->lora_base();
      if (lora_base_.empty() && is_main())
        lora_base_ = json{{"path", fs::absolute(p_.init_from->file()).lexically_normal().string()},
                          {"sha256", sha256_file(p_.init_from->file())},
                          {"step", p_.init_from->step()}}
                         .dump();
    }
  }
  p_.resume_from.reset();  // applied: its tensors need no memory any more
  p_.init_from.reset();
  log_->start(start_step_, resumed_config);
  // Training begins: the folder stays from here on (run_folder.h). A fresh run's folder whose start
  // failed (an init_from checkpoint that does not fit the model) went with the error.
  if (p_.folder) p_.folder->keep();
  t_start_ = t_last_log_ = std::chrono::steady_clock::now();
  return start_step_;
}

void HostTrainingRun::save(int64_t completed_steps) {
  // Never a non-finite model on disk: checkpoint rotation would then drop the good ones. One
  // reduction over the parameters, at save time only.
  {
    torch::NoGradGuard g;
    std::vector<at::Tensor> finite;
    for (const auto& p : p_.params) finite.push_back(at::isfinite(p.param).all().reshape({1}));
    if (!finite.empty() && !at::cat(finite).all().item<bool>())
      throw Error(diverged_message(completed_steps - 1, "non-finite weights"));
  }
  if (!is_main()) return;  // the replicas are identical: rank 0 writes
  RunCheckpoint ck(*p_.model, p_.host->registry(), p_.experiment->resolved_yaml, tokenizer(), completed_steps);
  for (const auto& g : groups_) {
    if (!g.name.empty()) ck.set_extra(g.name, *g.tensors);
    ck.set_optimizer(*g.optimizer, g.name);
  }
  ck.set_rng(p_.device);
  ck.set_lora_base(lora_base_);
  log_info("saved " + ckpt_->save(ck));
}

// ---- the step -----------------------------------------------------------------------------------------

double HostTrainingRun::begin_step(int64_t step) {
  step_ = step;
  const ScheduleSettings& s = p_.experiment->schedule;
  const double base = p_.optimizer->base_lr();
  const double min_ratio = base > 0 ? s.min_lr / base : 0.0;
  const double multiplier = lr_multiplier(step, s.warmup_steps, settings().max_steps, s.decay, min_ratio);
  for (auto& g : groups_) g.optimizer->set_lr_multiplier(multiplier);
  last_lr_ = p_.optimizer->current_lr();
  return last_lr_;
}

void HostTrainingRun::backward(const at::Tensor& loss, bool last_of_step) {
  if (!last_of_step || !p_.dist) return loss.backward();
  for (auto& g : groups_) g.sync->arm();  // buckets all-reduced as backward produces them
  loss.backward();
}

// Sophia's Gauss-Newton-Bartlett estimate (or any optimizer's curvature pass): a forward/backward
// against labels sampled from the model's own predictions, on the step's gradients' behalf: they are
// put aside and back, so the estimate's .grad is all the optimizers see in update_curvature.
void HostTrainingRun::curvature_pass(const at::Tensor& tokens) {
  if (!tokens.defined())
    throw Error("optimizer '" + p_.experiment->optimizer_name + "' asks for a curvature estimate, which trainer '" +
                p_.experiment->trainer_name + "' gives no input for (TrainingRun::optimizer_step's curvature_tokens)");
  std::vector<at::Tensor> kept;
  for (auto& g : groups_)
    for (auto& np : g.params) {
      kept.push_back(np.param.grad());
      np.param.mutable_grad() = at::Tensor();
    }
  backward(sampled_label_loss(p_.model->forward(tokens)));
  if (p_.dist)
    for (auto& g : groups_) g.sync->finish();
  for (auto& g : groups_)
    if (g.optimizer->wants_curvature_estimate(step_)) g.optimizer->update_curvature(tokens.numel());
  size_t i = 0;
  for (auto& g : groups_)
    for (auto& np : g.params) np.param.mutable_grad() = kept[i++];
}

at::Tensor HostTrainingRun::optimizer_step(const at::Tensor& curvature_tokens) {
  // The step's gradients, averaged over ranks (their all-reduces ran during the last backward).
  if (p_.dist)
    for (auto& g : groups_) g.sync->finish();
  bool curvature = false;
  for (const auto& g : groups_) curvature = curvature || g.optimizer->wants_curvature_estimate(step_);
  if (curvature && curvature_step_ != step_) {
    curvature_step_ = step_;
    curvature_pass(curvature_tokens);
  }
  std::vector<NamedParameter> all;
  for (const auto& g : groups_) all.insert(all.end(), g.params.begin(), g.params.end());
  at::Tensor grad_norm = clip_grad_norm(all, settings().grad_clip);
  for (auto& g : groups_) {
    g.optimizer->step();
    g.optimizer->zero_grad(g.params);
  }
  return grad_norm;
}

// ---- logs -------------------------------------------------------------------------------------------

bool HostTrainingRun::is_eval_step(int64_t step) const {
  return (settings().eval_every > 0 && (step + 1) % settings().eval_every == 0) || step + 1 == settings().max_steps;
}

bool HostTrainingRun::is_log_step(int64_t step) const {
  return (step + 1) % settings().log_every == 0 || step + 1 == last_step_ || is_eval_step(step);
}

void HostTrainingRun::write_metrics(const std::map<std::string, double>& m) {
  log_->write(m);
  log_->print(m);
}

void HostTrainingRun::stop_if_diverged(int64_t step, const std::map<std::string, double>& metrics) const {
  std::string bad;
  // The training signals (loss, val_loss, policy_loss, ..., grad_norm); other metrics may be
  // undefined for harmless reasons (the std of one reward).
  for (const auto& [k, v] : metrics)
    if ((k == "grad_norm" || k.find("loss") != std::string::npos) && !std::isfinite(v))
      bad += (bad.empty() ? "" : ", ") + k + " " + std::to_string(v);
  if (bad.empty()) return;
  throw Error(diverged_message(step, bad));
}

std::string HostTrainingRun::diverged_message(int64_t step, const std::string& what) const {
  const auto good = ckpt_->latest();
  return "training diverged at step " + std::to_string(step + 1) + " (" + what + "); nothing was saved after it. " +
         (good ? "The last good checkpoint is " + *good + ": lower optimizer.lr (or raise schedule.warmup_steps or " +
                     "trainer.grad_clip) and run again with trainer.resume: auto"
               : std::string("No checkpoint was saved before it: lower optimizer.lr (or raise schedule.warmup_steps)"));
}

void HostTrainingRun::end_step(int64_t step, const MetricsFn& metrics, int64_t tokens) {
  tokens_since_log_ += tokens;
  ++steps_since_log_;
  if (is_log_step(step)) {
    auto now = std::chrono::steady_clock::now();
    const double dt = std::chrono::duration<double>(now - t_last_log_).count();
    std::map<std::string, double> m = metrics ? metrics() : std::map<std::string, double>{};
    if (p_.dist && !m.empty()) {
      // Every rank computed its own values on its own data: log their means (one collective).
      std::vector<at::Tensor> values{at::empty({static_cast<int64_t>(m.size())}, at::kFloat)};
      int64_t k = 0;
      for (const auto& [key, v] : m) values[0][k++] = v;
      values[0] = values[0].to(p_.device);
      p_.dist->average(values);
      auto host = values[0].to(at::kCPU);
      k = 0;
      for (auto& [key, v] : m) v = host[k++].item<double>();
    }
    tokens_since_log_ *= p_.world_size;  // the whole job's throughput
    m["step"] = static_cast<double>(step + 1);
    m["lr"] = last_lr_;
    m["tokens_per_sec"] = dt > 0 ? static_cast<double>(tokens_since_log_) / dt : 0.0;
    m["ms_per_step"] = 1000.0 * dt / static_cast<double>(steps_since_log_);
    m["elapsed_sec"] = std::chrono::duration<double>(now - t_start_).count();
    if (peak_flops_ > 0)
      m["mfu"] = m["tokens_per_sec"] * flops_per_token_ / (peak_flops_ * static_cast<double>(p_.world_size));
    log_->write(m);
    stop_if_diverged(step, m);
    log_->print(m);
    t_last_log_ = now;
    tokens_since_log_ = steps_since_log_ = 0;
  }
  const bool saved = (settings().save_every > 0 && (step + 1) % settings().save_every == 0) || step + 1 == last_step_;
  if (saved) save(step + 1);
  if (step + 1 == last_step_ && last_step_ < settings().max_steps && is_main())
    log_info("stopped early after step " + std::to_string(last_step_) + " of " + std::to_string(settings().max_steps) +
             " (trainer.stop_after: " + std::to_string(settings().stop_after) +
             "); continue with trainer.resume: auto " +
             "(--set trainer.resume=auto), and without stop_after (or a larger one)");
  if (stop_requested(step + 1)) {
    // A stop signal (runtime.h): the step is done; keep it, say so, and end the run.
    if (!saved) save(step + 1);
    throw Error("stopped by " + signal_name(stop_signal_) + " after step " + std::to_string(step + 1) + " of " +
                std::to_string(settings().max_steps) + "; saved " +
                (fs::path(p_.out_dir) / "latest.safetensors").string() + ": continue with trainer.resume: auto");
  }
}

bool HostTrainingRun::stop_requested(int64_t completed) {
  const int sig = stop_signal();
  if (!p_.dist) {
    stop_signal_ = sig;
    return sig != 0;
  }
  // Ranks stop after the same step: the first rank that sees a signal proposes the step after its
  // current one (no rank can have passed it: each step's gradient all-reduce waits for every rank),
  // and every rank checks for a proposal at each step's end.
  if (stop_at_ < 0 && sig != 0) stop_at_ = p_.dist->propose_stop(completed + 1, sig, &stop_signal_);
  if (stop_at_ < 0) stop_at_ = p_.dist->agreed_stop(&stop_signal_);
  return stop_at_ >= 0 && completed >= stop_at_;
}

// ---- data ---------------------------------------------------------------------------------------------

at::Tensor HostTrainingRun::to_device(const at::Tensor& t) const { return linearnexus::to_device(t, p_.device); }

Batch HostTrainingRun::train_batch(int64_t batch_size, int64_t micro_steps, int64_t step, int64_t micro) {
  const DataSettings& d = p_.experiment->data;
  BatchSpec spec{batch_size, d.seq_len, seed(), d.sampling, micro_steps, p_.world_size};
  Batch b = p_.data.train ? get_batch(*p_.data.train, spec, step, micro, p_.rank)
                          : get_example_batch(*p_.data.train_examples, spec, step, micro, p_.rank);
  return {to_device(b.x), to_device(b.y)};
}

Batch HostTrainingRun::val_batch(int64_t batch_size, int64_t index) {
  // Rank r's share of global batch `index`: a data-parallel evaluation covers what one process would.
  Batch b = p_.data.val ? get_batch(*p_.data.val, batch_size, seq_len(), seed() ^ 0x5eed5eedull, index, 0, p_.rank)
                        : get_example_batch_in_order(*p_.data.val_examples, batch_size, seq_len(),
                                                     index * p_.world_size + p_.rank);
  return {to_device(b.x), to_device(b.y)};
}

int64_t HostTrainingRun::rows_per_example() const {
  return p_.data.train_examples ? p_.data.train_examples->sequences_per_example() : 1;
}

double HostTrainingRun::evaluate_lm(int64_t batches, int64_t batch_size) {
  torch::NoGradGuard g;
  const bool was_training = p_.model->is_training();
  p_.model->eval();
  at::Tensor total = at::zeros({}, at::TensorOptions().device(p_.device));
  for (int64_t i = 0; i < batches; ++i) {
    Batch b = val_batch(batch_size, i);
    total += p_.model->next_token_loss(b.x, b.y);
  }
  if (was_training) p_.model->train();
  return mean_over_ranks(total.item<double>() / static_cast<double>(std::max<int64_t>(batches, 1)));
}

double HostTrainingRun::mean_over_ranks(double value) const { return p_.dist ? p_.dist->average(value) : value; }

std::string HostTrainingRun::describe() const {
  std::ostringstream o;
  const auto& c = p_.model->config();
  o << "model: " << c.dims.n_layer << " layers [";
  for (size_t i = 0; i < c.block_pattern.size(); ++i) o << (i ? ", " : "") << c.block_pattern[i];
  o << "], hidden " << c.dims.hidden_size << ", vocab " << c.dims.vocab_size << ", "
    << static_cast<double>(p_.model->num_parameters()) / 1e6 << "M parameters (" << p_.model->num_parameters()
    << ") on " << p_.device.str();
  if (const auto& lora = p_.model->lora()) {
    int64_t trained = 0;
    for (const auto& np : p_.params) trained += np.param.numel();
    o << "\n  LoRA: rank " << lora->config().rank << ", alpha " << lora->config().alpha << " on "
      << lora->sites().size() << " Linear layers; " << trained << " parameters train, the rest is frozen";
  }
  o << "\n  data: ";
  if (p_.data.train)
    o << p_.data.train->size() << " train tokens, " << p_.data.val->size() << " validation tokens";
  else
    o << p_.data.train_examples->size() << " train examples (" << p_.data.train_examples->trained_tokens()
      << " tokens carry the loss), " << p_.data.val_examples->size() << " validation examples, "
      << p_.experiment->data.format;
  o << " (" << p_.data.tokenizer->kind() << " tokenizer, vocab " << p_.data.tokenizer->vocab_size()
    << ")\n  optimizer: " << p_.experiment->optimizer_name << ": " << p_.optimizer->describe_groups()
    << "\n  run folder: " << p_.out_dir << " (train.log: this log)";
  if (!p_.device.is_cuda()) o << "\n  " << thread_choice().describe();
  return o.str();
}

}  // namespace linearnexus
