#pragma once
// The host's TrainingRun (trainer.h): what prepare_run (session.h) builds from an experiment and a
// trainer plugin runs. The schedule, the step's update, metrics.jsonl, the progress line, evaluation,
// checkpoints (run_checkpoint.h) and exact resume, data-parallel averaging (distributed.h).
#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "linearnexus/host/config.h"
#include "linearnexus/host/data.h"
#include "linearnexus/host/run_checkpoint.h"
#include "linearnexus/trainer.h"

namespace linearnexus {

class Distributed;
class GradientSync;
class PluginHost;
class RunFolder;
class RunLog;

// Learning-rate multiplier for `step` (0-based): linear warmup over warmup_steps, then decay
// ("cosine", "linear", "constant") to min_ratio at max_steps.
double lr_multiplier(int64_t step, int64_t warmup_steps, int64_t max_steps, const std::string& decay, double min_ratio);
// Global L2 norm of all gradients (a 0-d tensor: reading it is the caller's choice, so the step
// need not synchronise with the device); scales them to max_norm when above it (<= 0: no clip).
at::Tensor clip_grad_norm(const std::vector<NamedParameter>& params, double max_norm);
// A host tensor on `device`. To CUDA it goes through pinned memory without blocking, so the host
// queues the step's kernels while the GPU still runs the previous step (a plain .to(cuda) from
// pageable memory waits for the GPU to drain: a host-device sync every step).
at::Tensor to_device(const at::Tensor& t, const at::Device& device);

// What prepare_run decides and builds before the trainer runs.
struct RunParts {
  const Experiment* experiment = nullptr;
  PluginHost* host = nullptr;
  std::shared_ptr<LMModel> model;
  std::vector<NamedParameter> params;
  std::shared_ptr<Optimizer> optimizer;
  DataSplits data;
  at::Device device = at::kCPU;
  std::string out_dir;
  // Where the run starts, decided once and read once: the checkpoint it continues (model, optimizer,
  // trainables, RNG and step), else the one whose weights start it (trainer.init_from), else neither.
  std::optional<RunCheckpoint> resume_from, init_from;
  std::string init_file;  // trainer.init_from resolved to a file ("" = not set), resumed or not
  int64_t rank = 0, world_size = 1;
  std::shared_ptr<Distributed> dist;  // set when world_size > 1
  std::shared_ptr<RunFolder> folder;  // the run's hold on out_dir (run_folder.h)
};

class HostTrainingRun final : public TrainingRun {
 public:
  explicit HostTrainingRun(RunParts parts);
  ~HostTrainingRun() override;

  // ---- TrainingRun ------------------------------------------------------------------------------
  LMModel& model() override { return *p_.model; }
  const Tokenizer& tokenizer() const override { return *p_.data.tokenizer; }
  at::Device device() const override { return p_.device; }
  uint64_t seed() const override { return p_.experiment->run.seed; }
  int64_t rank() const override { return p_.rank; }
  int64_t world_size() const override { return p_.world_size; }
  void add_trainable(const std::string& name, torch::nn::Module& tensors, std::vector<NamedParameter> params,
                     std::shared_ptr<Optimizer> optimizer) override;
  std::shared_ptr<Optimizer> make_optimizer(const std::vector<NamedParameter>& params) override;
  int64_t resume() override;
  int64_t max_steps() const override { return settings().max_steps; }
  int64_t last_step() const override { return last_step_; }
  double begin_step(int64_t step) override;
  void backward(const at::Tensor& loss, bool last_of_step = true) override;
  at::Tensor optimizer_step(const at::Tensor& curvature_tokens = {}) override;
  void end_step(int64_t step, const MetricsFn& metrics, int64_t tokens) override;
  bool is_log_step(int64_t step) const override;
  bool is_eval_step(int64_t step) const override;
  void write_metrics(const std::map<std::string, double>& metrics) override;
  double mean_over_ranks(double value) const override;
  int64_t seq_len() const override { return p_.experiment->data.seq_len; }
  Batch train_batch(int64_t batch_size, int64_t micro_steps, int64_t step, int64_t micro) override;
  Batch val_batch(int64_t batch_size, int64_t index) override;
  double evaluate_lm(int64_t batches, int64_t batch_size) override;
  int64_t rows_per_example() const override;
  at::Tensor to_device(const at::Tensor& host_tensor) const override;
  std::shared_ptr<Task> task() override;
  std::string start_checkpoint() const override { return p_.init_file; }
  std::shared_ptr<LMModel> load_model(const std::string& checkpoint, bool trainable) override;
  std::unique_ptr<Generator> make_generator(const LMModel& model) override;

  // ---- for the runner and the tests -------------------------------------------------------------
  std::shared_ptr<LMModel> model_ptr() const { return p_.model; }
  const std::vector<NamedParameter>& params() const { return p_.params; }
  Optimizer& optimizer() { return *p_.optimizer; }
  const DataSplits& data() const { return p_.data; }
  const std::string& out_dir() const { return p_.out_dir; }
  const Experiment& experiment() const { return *p_.experiment; }
  // Save now (step = number of completed steps).
  void save(int64_t completed_steps);
  std::string describe() const;  // parameter count, data sizes, optimizer groups

 private:
  struct Trainable {
    std::string name;
    torch::nn::Module* tensors;
    std::vector<NamedParameter> params;
    std::shared_ptr<Optimizer> optimizer;
    std::shared_ptr<GradientSync> sync;
  };
  const TrainerSettings& settings() const { return p_.experiment->trainer; }
  void curvature_pass(const at::Tensor& tokens);
  // Whether the run stops after `completed` steps on a stop signal (runtime.h), agreed between ranks.
  bool stop_requested(int64_t completed);
  void stop_if_diverged(int64_t step, const std::map<std::string, double>& metrics) const;
  std::string diverged_message(int64_t step, const std::string& what) const;

  RunParts p_;
  std::vector<Trainable> groups_;  // [0]: the model's; then the trainer's additions
  std::unique_ptr<CheckpointManager> ckpt_;
  std::unique_ptr<RunLog> log_;  // metrics.jsonl, TensorBoard, the progress line (run_log.h)
  std::string lora_base_;        // RunCheckpoint::lora_base of a LoRA run, carried into each checkpoint
  int64_t last_step_ = 0, start_step_ = 0, step_ = 0, curvature_step_ = -1;
  std::chrono::steady_clock::time_point t_start_, t_last_log_;
  int64_t tokens_since_log_ = 0, steps_since_log_ = 0;
  // Model FLOPs utilisation on a GPU: training FLOPs per token and the per-GPU peak (trainer.peak_tflops,
  // else measured at startup); 0 = no mfu (CPU runs).
  double flops_per_token_ = 0, peak_flops_ = 0;
  double last_lr_ = 0;
  int64_t stop_at_ = -1;  // the agreed number of steps after which a signalled run stops (-1: none yet)
  int stop_signal_ = 0;
};

}  // namespace linearnexus
