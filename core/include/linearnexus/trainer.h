#pragma once
// The trainer protocol and the run machinery every trainer shares: schedule, metrics.jsonl,
// the progress line, evaluation, checkpoints and exact resume (implemented in trainer.cpp; the
// losses are in loss.h).
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "linearnexus/checkpoint.h"
#include "linearnexus/config.h"
#include "linearnexus/data.h"
#include "linearnexus/loss.h"
#include "linearnexus/model.h"
#include "linearnexus/optimizer.h"

namespace linearnexus {

class PluginHost;
class Distributed;
class GradientSync;

// Everything the host builds from the experiment before handing over to a trainer.
struct TrainContext {
  const Experiment* experiment = nullptr;
  PluginHost* host = nullptr;
  std::shared_ptr<LMModel> model;
  std::vector<NamedParameter> params;
  std::shared_ptr<Optimizer> optimizer;
  DataSplits data;
  at::Device device = at::kCPU;
  std::string out_dir;
  // Where the run starts, decided once by prepare_run (trainer.resume, trainer.init_from): a
  // checkpoint to continue (model, optimizer, RNG and step), else a checkpoint whose weights start a
  // fresh run, else neither (random initialisation).
  std::string resume_file, init_file;
  // This process's data-parallel rank among world_size (batches are drawn per rank), and when
  // world_size > 1 its process group and the averaging of ctx.params' gradients (see
  // TrainingRun::backward).
  int64_t rank = 0, world_size = 1;
  std::shared_ptr<Distributed> dist;
  std::shared_ptr<GradientSync> grad_sync;
};

class Trainer {
 public:
  virtual ~Trainer() = default;
  virtual void run(TrainContext& ctx) = 0;
};

// A host batch tensor on `device`. To CUDA it goes through pinned memory without blocking, so the
// host queues the step's kernels while the GPU still runs the previous step (a plain .to(cuda)
// from pageable memory waits for the GPU to drain: a host-device sync every step).
at::Tensor to_device(const at::Tensor& t, const at::Device& device);

// The run's bookkeeping. A trainer creates one, calls resume() once, and then per step
// begin_step(step) ... end_step(step, metrics).
class TrainingRun {
 public:
  explicit TrainingRun(TrainContext& ctx);
  ~TrainingRun();

  // Restores model, optimizer, RNG and `extra` tensors from ctx.resume_file, or the model alone
  // from ctx.init_file; opens metrics.jsonl. Returns the step to start at (0 for a fresh run).
  int64_t resume(TensorMap* extra = nullptr);
  // Applies the lr schedule for `step`; returns the lr.
  double begin_step(int64_t step);
  // Finishes step `step` (0-based). On log steps (every log_every, eval steps and the last step)
  // it calls `metrics` (so values are read from the device only then), adds lr, tokens/s and
  // ms/step, writes a metrics.jsonl line and prints the progress line; a non-finite value there
  // stops the run with an Error (training diverged), as do non-finite weights at a save. Saves a checkpoint every
  // save_every steps and at the end. `tokens`: tokens the step processed.
  using MetricsFn = std::function<std::map<std::string, double>()>;
  void end_step(int64_t step, const MetricsFn& metrics, int64_t tokens, const TensorMap& extra = {});
  bool is_log_step(int64_t step) const;
  bool is_eval_step(int64_t step) const;
  // How this run draws training batches of `batch_size` sequences of data.seq_len tokens,
  // `micro_steps` of them per optimizer step (data.sampling, the seed, this rank).
  BatchSpec batch_spec(int64_t batch_size, int64_t micro_steps) const;
  // Micro-batch `micro` of step `step` from the training split (a pure function of seed, step,
  // micro-batch and rank: resumes continue on the same batches).
  Batch train_batch(const BatchSpec& spec, int64_t step, int64_t micro) const;
  // Mean validation loss over `batches` batches of `batch_size` sequences (fixed, independent of
  // the step).
  double evaluate_lm(int64_t batches, int64_t batch_size);
  // Save now (step = number of completed steps).
  void save(int64_t completed_steps, const TensorMap& extra = {});
  // Write a metrics line without the console progress (e.g. step-0 evaluations); rank 0 only.
  void write_metrics(const std::map<std::string, double>& metrics);
  // loss.backward(); when it is the step's last backward (`last_of_step`) and the run is data-
  // parallel, ctx.params' gradients come out averaged over ranks (GradientSync: bucketed all-reduce
  // overlapped with the backward). Earlier micro-batches accumulate locally, unsynchronised.
  void backward(const at::Tensor& loss, bool last_of_step = true);
  // The mean over ranks of a value every rank computed (the value itself on one process). A
  // collective: every rank must call it at the same point.
  double mean_over_ranks(double value) const;
  bool is_main() const { return ctx_.rank == 0; }

  int64_t max_steps() const { return max_steps_; }
  // Where this invocation stops: max_steps, or trainer.stop_after when set (loop to this).
  int64_t last_step() const { return last_step_; }

 private:
  // metrics.jsonl cut back to the resumed step (an interrupted run may have logged past its last
  // checkpoint) and opened for appending.
  void open_metrics(const std::filesystem::path& metrics_path);
  // metrics.jsonl: one line, recovering once from a failed write (then an Error, never a lost line).
  void append_metrics_line(const std::string& line);
  // A non-finite metric (loss, grad_norm...) ends the run with an Error naming the step and the
  // last good checkpoint.
  void stop_if_diverged(int64_t step, const std::map<std::string, double>& metrics) const;
  std::string diverged_message(int64_t step, const std::string& what) const;

  TrainContext& ctx_;
  int64_t max_steps_, last_step_, log_every_, eval_every_, save_every_;
  int64_t seq_len_;
  uint64_t seed_;
  Sampling sampling_;
  std::unique_ptr<CheckpointManager> ckpt_;
  std::ofstream metrics_;
  std::chrono::steady_clock::time_point t_start_, t_last_log_;
  int64_t tokens_since_log_ = 0, steps_since_log_ = 0, start_step_ = 0;
  // Model FLOPs utilisation on a GPU: training FLOPs per token and the per-GPU peak (trainer.peak_tflops,
  // else measured at startup); 0 = no mfu (CPU runs).
  double flops_per_token_ = 0, peak_flops_ = 0;
  double last_lr_ = 0;
};

}  // namespace linearnexus
