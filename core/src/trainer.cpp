// The run bookkeeping every trainer shares (see trainer.h): the schedule, metrics.jsonl, the
// progress line, evaluation, checkpoints and exact resume.
#include "linearnexus/trainer.h"

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <sstream>

#include "linearnexus/distributed.h"
#include "linearnexus/error.h"
#include "linearnexus/log.h"
#include "linearnexus/plugin_host.h"
#include "linearnexus/session.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace linearnexus {

at::Tensor to_device(const at::Tensor& t, const at::Device& device) {
  if (!device.is_cuda() || t.device() == device) return t.to(device);
  return t.pin_memory().to(device, /*non_blocking=*/true);
}

// ---- TrainingRun ------------------------------------------------------------------------------

namespace {
std::string human_duration(double seconds) {
  char buf[32];
  long s = static_cast<long>(seconds + 0.5);
  if (s >= 3600) std::snprintf(buf, sizeof buf, "%ldh%02ldm", s / 3600, (s / 60) % 60);
  else if (s >= 60) std::snprintf(buf, sizeof buf, "%ldm%02lds", s / 60, s % 60);
  else std::snprintf(buf, sizeof buf, "%lds", s);
  return buf;
}

// Training FLOPs per token of `m` on sequences of T tokens (the nanoGPT / PaLM convention): 6 per
// matmul weight (2 forward, 4 backward), i.e. every parameter but an untied input embedding (a
// tied one is the LM head's matmul) and the norms' and biases' vectors (ignored: < 0.1%); plus 12 C T
// per attention-like layer for the scores and the weighted sum, counted as full T x T.
double training_flops_per_token(const LMModel& m, int64_t T) {
  const auto& d = m.config().dims;
  double n = static_cast<double>(m.num_parameters());
  if (!m.config().tie_embeddings) n -= static_cast<double>(d.vocab_size * d.hidden_size);
  int64_t attention_layers = 0;
  for (const auto& kind : m.block_kinds())
    attention_layers += kind == "attention" || kind == "swa" || kind == "mla";
  return 6.0 * n + 12.0 * static_cast<double>(attention_layers * d.hidden_size * T);
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

TrainingRun::TrainingRun(TrainContext& ctx) : ctx_(ctx) {
  const Experiment& e = *ctx.experiment;
  const Params& t = e.trainer;
  max_steps_ = t.get_int("max_steps");
  last_step_ = t.get_int("stop_after") > 0 ? std::min(max_steps_, t.get_int("stop_after")) : max_steps_;
  log_every_ = std::max<int64_t>(1, t.get_int("log_every"));
  eval_every_ = t.get_int("eval_every");
  save_every_ = t.get_int("save_every");
  seq_len_ = e.data.get_int("seq_len");
  seed_ = static_cast<uint64_t>(e.top.get_int("seed"));
  sampling_ = parse_sampling(e.data.get_string("sampling"));
  ckpt_ = std::make_unique<CheckpointManager>(ctx.out_dir, t.get_int("keep_last_n"));
  if (ctx.device.is_cuda() && ctx.model) {
    flops_per_token_ = training_flops_per_token(*ctx.model, seq_len_);
    const double peak_tflops = t.get_float("peak_tflops");
    peak_flops_ = peak_tflops > 0 ? peak_tflops * 1e12 : measured_matmul_flops(ctx.device);
    if (is_main())
      log_info("mfu: " + std::to_string(static_cast<int64_t>(flops_per_token_ / 1e6)) + " MFLOP per token against " +
               std::to_string(static_cast<int64_t>(peak_flops_ / 1e12)) + " TFLOP/s per GPU (" +
               (peak_tflops > 0 ? "trainer.peak_tflops" : "bf16 8192^3 matmul measured at startup") + ")");
  }
  t_start_ = t_last_log_ = std::chrono::steady_clock::now();
}

TrainingRun::~TrainingRun() = default;

int64_t TrainingRun::resume(TensorMap* extra) {
  const fs::path metrics_path = fs::path(ctx_.out_dir) / "metrics.jsonl";
  start_step_ = 0;
  if (const std::string& file = ctx_.resume_file; !file.empty()) {
    auto ck = load_safetensors(file);
    load_model_tensors(*ctx_.model, ck.tensors, file);
    start_step_ = checkpoint_step(ck.metadata, file);
    TensorMap optim;
    for (const auto& [k, v] : ck.tensors) {
      if (k.rfind("optim.", 0) == 0 || k.rfind("extra.", 0) == 0) check_finite(v, k, file);
      if (k.rfind("optim.", 0) == 0) optim[k.substr(6)] = v.to(ctx_.device);
      if (extra && k.rfind("extra.", 0) == 0) (*extra)[k.substr(6)] = v;
    }
    // The optimizer copies its state in place: a tensor of another shape or dtype would surface as a
    // bare LibTorch broadcast error, so it is named here against the optimizer's own state.
    for (const auto& [k, v] : ctx_.optimizer->state_dict()) {
      auto it = optim.find(k);
      if (it != optim.end() && (it->second.sizes() != v.sizes() || it->second.scalar_type() != v.scalar_type()))
        throw Error("checkpoint " + file + ": tensor 'optim." + k + "' is " + c10::toString(it->second.scalar_type()) + " " +
                    c10::str(it->second.sizes()) + ", but the optimizer's is " + c10::toString(v.scalar_type()) + " " +
                    c10::str(v.sizes()) + "; was it saved by another optimizer or model config? (the file may be corrupt)");
    }
    ctx_.optimizer->load_state_dict(optim);
    if (ck.tensors.count("rng.cpu")) set_rng_state(ck.tensors.at("rng.cpu"), at::kCPU, file);
    if (ctx_.device.is_cuda() && ck.tensors.count("rng.cuda")) set_rng_state(ck.tensors.at("rng.cuda"), ctx_.device, file);
    log_info("resumed from " + file + " at step " + std::to_string(start_step_));
  } else if (const std::string& init = ctx_.init_file; !init.empty()) {
    // A fresh run from another run's weights: the model only, a new optimizer and step 0.
    load_model_tensors(*ctx_.model, load_safetensors(init).tensors, init);
    log_info("initialised the model from " + init);
  }
  if (is_main()) open_metrics(metrics_path);
  t_start_ = t_last_log_ = std::chrono::steady_clock::now();
  return start_step_;
}

void TrainingRun::open_metrics(const fs::path& metrics_path) {
  // Drop metric lines past the resumed step (an interrupted run may have logged beyond its last
  // checkpoint), so metrics.jsonl reads as one uninterrupted run.
  if (fs::exists(metrics_path)) {
    std::ifstream in(metrics_path);
    std::string kept, line;
    while (std::getline(in, line)) {
      try {
        if (!line.empty() && json::parse(line).value("step", int64_t{0}) <= start_step_) kept += line + "\n";
      } catch (const std::exception&) {  // a torn last line from a crash: drop it
      }
    }
    in.close();
    std::ofstream(metrics_path, std::ios::trunc) << kept;
  }
  metrics_.open(metrics_path, std::ios::app);
  if (!metrics_) throw Error("cannot write " + metrics_path.string());
}

double TrainingRun::begin_step(int64_t step) {
  const Params& s = ctx_.experiment->schedule;
  const double base = ctx_.optimizer->base_lr();
  const double min_ratio = base > 0 ? s.get_float("min_lr") / base : 0.0;
  ctx_.optimizer->set_lr_multiplier(
      lr_multiplier(step, s.get_int("warmup_steps"), max_steps_, s.get_string("decay"), min_ratio));
  last_lr_ = ctx_.optimizer->current_lr();
  return last_lr_;
}

bool TrainingRun::is_eval_step(int64_t step) const {
  return (eval_every_ > 0 && (step + 1) % eval_every_ == 0) || step + 1 == max_steps_;
}

bool TrainingRun::is_log_step(int64_t step) const {
  return (step + 1) % log_every_ == 0 || step + 1 == last_step_ || is_eval_step(step);
}

BatchSpec TrainingRun::batch_spec(int64_t batch_size, int64_t micro_steps) const {
  BatchSpec spec;
  spec.batch_size = batch_size;
  spec.seq_len = seq_len_;
  spec.seed = seed_;
  spec.sampling = sampling_;
  spec.micro_steps = micro_steps;
  spec.world_size = ctx_.world_size;
  return spec;
}

Batch TrainingRun::train_batch(const BatchSpec& spec, int64_t step, int64_t micro) const {
  return get_batch(*ctx_.data.train, spec, step, micro, ctx_.rank);
}

double TrainingRun::evaluate_lm(int64_t batches, int64_t batch_size) {
  const uint64_t seed = seed_ ^ 0x5eed5eedull;
  torch::NoGradGuard g;
  const bool was_training = ctx_.model->is_training();
  ctx_.model->eval();
  at::Tensor total = at::zeros({}, at::TensorOptions().device(ctx_.device));
  for (int64_t i = 0; i < batches; ++i) {
    Batch b = get_batch(*ctx_.data.val, batch_size, seq_len_, seed, i, 0, ctx_.rank);
    total += ctx_.model->next_token_loss(to_device(b.x, ctx_.device), to_device(b.y, ctx_.device));
  }
  if (was_training) ctx_.model->train();
  return mean_over_ranks(total.item<double>() / static_cast<double>(std::max<int64_t>(batches, 1)));
}

double TrainingRun::mean_over_ranks(double value) const { return ctx_.dist ? ctx_.dist->average(value) : value; }

void TrainingRun::backward(const at::Tensor& loss, bool last_of_step) {
  if (!ctx_.grad_sync || !last_of_step) {
    loss.backward();
    return;
  }
  ctx_.grad_sync->arm();
  loss.backward();
  ctx_.grad_sync->finish();
}

void TrainingRun::write_metrics(const std::map<std::string, double>& m) {
  if (!is_main()) return;
  json j = json::object();
  for (const auto& [k, v] : m) {
    if (k == "step") j[k] = static_cast<int64_t>(v);
    else j[k] = v;
  }
  append_metrics_line(j.dump() + "\n");
}

namespace {
// Cut a file after its last newline: what a failed write left of a line goes, whole lines stay.
void drop_torn_tail(const fs::path& path) {
  std::string text;
  {
    std::ifstream in(path, std::ios::binary);
    text.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  const size_t end = text.rfind('\n');
  std::error_code ec;
  fs::resize_file(path, end == std::string::npos ? 0 : end + 1, ec);
}
}  // namespace

void TrainingRun::append_metrics_line(const std::string& line) {
  metrics_ << line;
  metrics_.flush();
  if (metrics_) return;
  // A write failed (a moment of full disk): reopen, drop the torn tail so the file stays one JSON
  // object per line, and write the line again; if that fails too, stop rather than lose lines.
  const fs::path path = fs::path(ctx_.out_dir) / "metrics.jsonl";
  metrics_.close();
  drop_torn_tail(path);
  metrics_.clear();
  metrics_.open(path, std::ios::app);
  metrics_ << line;
  metrics_.flush();
  if (!metrics_) {
    metrics_.close();
    drop_torn_tail(path);
    throw Error("cannot append to " + path.string() + " (disk full?); training stopped so that no metric is lost. " +
                "Free some space and run again with trainer.resume: auto");
  }
  log_warn("a write to " + path.string() + " failed once; reopened it and wrote the line again");
}

void TrainingRun::stop_if_diverged(int64_t step, const std::map<std::string, double>& metrics) const {
  std::string bad;
  // The training signals (loss, val_loss, policy_loss, ..., grad_norm); other metrics may be
  // undefined for harmless reasons (the std of one reward).
  for (const auto& [k, v] : metrics)
    if ((k == "grad_norm" || k.find("loss") != std::string::npos) && !std::isfinite(v))
      bad += (bad.empty() ? "" : ", ") + k + " " + std::to_string(v);
  if (bad.empty()) return;
  throw Error(diverged_message(step, bad));
}

std::string TrainingRun::diverged_message(int64_t step, const std::string& what) const {
  const auto good = ckpt_->latest();
  return "training diverged at step " + std::to_string(step + 1) + " (" + what + "); nothing was saved after it. " +
         (good ? "The last good checkpoint is " + *good + ": lower optimizer.lr (or raise schedule.warmup_steps or " +
                     "trainer.grad_clip) and run again with trainer.resume: auto"
               : std::string("No checkpoint was saved before it: lower optimizer.lr (or raise schedule.warmup_steps)"));
}

void TrainingRun::end_step(int64_t step, const MetricsFn& metrics, int64_t tokens, const TensorMap& extra) {
  tokens_since_log_ += tokens;
  ++steps_since_log_;
  if (is_log_step(step)) {
    auto now = std::chrono::steady_clock::now();
    const double dt = std::chrono::duration<double>(now - t_last_log_).count();
    std::map<std::string, double> m = metrics ? metrics() : std::map<std::string, double>{};
    if (ctx_.dist && !m.empty()) {
      // Every rank computed its own values on its own data: log their means (one collective).
      std::vector<at::Tensor> values{at::empty({static_cast<int64_t>(m.size())}, at::kFloat)};
      int64_t k = 0;
      for (const auto& [key, v] : m) values[0][k++] = v;
      values[0] = values[0].to(ctx_.device);
      ctx_.dist->average(values);
      auto host = values[0].to(at::kCPU);
      k = 0;
      for (auto& [key, v] : m) v = host[k++].item<double>();
    }
    tokens_since_log_ *= ctx_.world_size;  // the whole job's throughput
    m["step"] = static_cast<double>(step + 1);
    m["lr"] = last_lr_;
    m["tokens_per_sec"] = dt > 0 ? static_cast<double>(tokens_since_log_) / dt : 0.0;
    m["ms_per_step"] = 1000.0 * dt / static_cast<double>(steps_since_log_);
    m["elapsed_sec"] = std::chrono::duration<double>(now - t_start_).count();
    if (peak_flops_ > 0) m["mfu"] = m["tokens_per_sec"] * flops_per_token_ / (peak_flops_ * static_cast<double>(ctx_.world_size));
    write_metrics(m);
    stop_if_diverged(step, m);
    std::ostringstream line;
    char buf[256];
    std::snprintf(buf, sizeof buf, "step %lld/%lld", static_cast<long long>(step + 1), static_cast<long long>(max_steps_));
    line << buf;
    for (const auto& [k, v] : m) {
      if (k == "step" || k == "lr" || k == "tokens_per_sec" || k == "ms_per_step" || k == "elapsed_sec" || k == "mfu") continue;
      std::snprintf(buf, sizeof buf, " | %s %.4f", k.c_str(), v);
      line << buf;
    }
    std::snprintf(buf, sizeof buf, " | lr %.2e | %.0f tok/s", last_lr_, m["tokens_per_sec"]);
    line << buf;
    if (peak_flops_ > 0) {
      std::snprintf(buf, sizeof buf, " | mfu %.1f%%", 100.0 * m["mfu"]);
      line << buf;
    }
    std::snprintf(buf, sizeof buf, " | %.1f ms/step | ETA %s", m["ms_per_step"],
                  human_duration(m["ms_per_step"] / 1000.0 * static_cast<double>(max_steps_ - step - 1)).c_str());
    line << buf;
    if (is_main()) log_info(line.str());
    t_last_log_ = now;
    tokens_since_log_ = steps_since_log_ = 0;
  }
  if ((save_every_ > 0 && (step + 1) % save_every_ == 0) || step + 1 == last_step_) save(step + 1, extra);
}

void TrainingRun::save(int64_t completed_steps, const TensorMap& extra) {
  // Never a non-finite model on disk: checkpoint rotation would then drop the good ones. One
  // reduction over the parameters, at save time only.
  {
    torch::NoGradGuard g;
    std::vector<at::Tensor> finite;
    for (const auto& p : ctx_.params) finite.push_back(at::isfinite(p.param).all().reshape({1}));
    if (!finite.empty() && !at::cat(finite).all().item<bool>())
      throw Error(diverged_message(completed_steps - 1, "non-finite weights"));
  }
  if (!is_main()) return;  // the replicas are identical: rank 0 writes
  TensorMap t = model_tensors(*ctx_.model);
  for (const auto& [k, v] : ctx_.optimizer->state_dict()) t["optim." + k] = v;
  for (const auto& [k, v] : extra) t["extra." + k] = v;
  t["rng.cpu"] = rng_state();
  if (ctx_.device.is_cuda()) t["rng.cuda"] = rng_state(ctx_.device);
  const Metadata meta = checkpoint_metadata(*ctx_.model, ctx_.host->registry(), ctx_.experiment->resolved_yaml,
                                            *ctx_.data.tokenizer, completed_steps);
  const std::string file = ckpt_->save(completed_steps, t, meta);
  log_info("saved " + file);
}

}  // namespace linearnexus
