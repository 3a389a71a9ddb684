#pragma once
// The trainer protocol (a plugin kind) and the training run the host hands a trainer.
//
// The host builds what the experiment names (the model on its device, the optimizer, the data, the
// run folder, the data-parallel ranks) and calls Trainer::run with a TrainingRun: what a trainer
// needs of the run and nothing of how the host provides it. Every trainer's loop has one shape:
//
//   const int64_t start = run.resume();       // 0, or the step the checkpoint it continues ended at
//   for (int64_t step = start; step < run.last_step(); ++step) {
//     run.begin_step(step);                    // the lr schedule
//     ... forward passes; run.backward(loss, last_of_step) ...
//     at::Tensor grad_norm = run.optimizer_step(curvature_tokens);
//     run.end_step(step, metrics, tokens);     // progress line, metrics.jsonl, checkpoints
//   }
#include <ATen/ATen.h>
#include <torch/nn/module.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "linearnexus/generate.h"
#include "linearnexus/model.h"
#include "linearnexus/optimizer.h"

namespace linearnexus {

class Task;
class Tokenizer;
class TrainingRun;

// The experiment's keys outside a trainer's own Params that a trainer may rely on (check_start).
struct TrainerStart {
  std::string task;       // the task section's plugin name ("" = no task section)
  std::string init_from;  // trainer.init_from ("" = not set)
};

class Trainer {
 public:
  virtual ~Trainer() = default;
  virtual void run(TrainingRun& run) = 0;
  // Refuse an experiment this trainer cannot run (an Error saying what to set: a task section to draw
  // prompts from, a model to start from), before anything runs: `validate` and `run` both call it,
  // so both refuse the same way. The default accepts every experiment.
  virtual void check_start(const TrainerStart& start) const {}
};

// Training windows from the run's data.
struct Batch {
  at::Tensor x;  // [B, T] int64 inputs
  at::Tensor y;  // [B, T] int64 next-token targets
};

class TrainingRun {
 public:
  virtual ~TrainingRun() = default;

  // ---- what is trained --------------------------------------------------------------------------
  virtual LMModel& model() = 0;
  virtual const Tokenizer& tokenizer() const = 0;
  virtual at::Device device() const = 0;
  // The experiment's seed: a trainer derives its own streams from it (resumes then draw the same).
  virtual uint64_t seed() const = 0;
  // This process's data-parallel rank among world_size() (1: not data-parallel). Rank 0 writes.
  virtual int64_t rank() const = 0;
  virtual int64_t world_size() const = 0;
  bool is_main() const { return rank() == 0; }

  // More weights trained beside the model (PPO's value function): `tensors` (parameters and buffers,
  // by name) are checkpointed as "extra.<name>.<tensor>" and restored by resume(), `optimizer`'s
  // state as "extra.<name>_optim.<key>"; optimizer_step() clips, syncs and steps `params` together
  // with the model's, and the schedule scales the optimizer's lr as the model's. Call before resume().
  // On data-parallel runs every rank starts from rank 0's values of `tensors`.
  virtual void add_trainable(const std::string& name, torch::nn::Module& tensors, std::vector<NamedParameter> params,
                             std::shared_ptr<Optimizer> optimizer) = 0;
  // An optimizer of the experiment's kind and settings (optimizer: section) over `params`.
  virtual std::shared_ptr<Optimizer> make_optimizer(const std::vector<NamedParameter>& params) = 0;

  // ---- the loop ---------------------------------------------------------------------------------
  // Restores the model, the optimizers, the trainables, the random generators and the step from
  // the checkpoint the run continues (trainer.resume), or the model's weights alone from the one it
  // starts from (trainer.init_from); opens metrics.jsonl. Returns the step to start at.
  virtual int64_t resume() = 0;
  virtual int64_t max_steps() const = 0;
  // Where this invocation stops: max_steps, or trainer.stop_after when set (loop to this).
  virtual int64_t last_step() const = 0;
  // Applies the lr schedule for `step` (0-based) to every optimizer; returns the main lr.
  virtual double begin_step(int64_t step) = 0;
  // loss.backward(). `last_of_step`: the step's last backward, after which data-parallel ranks
  // average their gradients (overlapped with this backward); earlier micro-batches accumulate.
  virtual void backward(const at::Tensor& loss, bool last_of_step = true) = 0;
  // The step's update, the same for every trainer: the curvature-estimate pass when an optimizer asks
  // for one this step (Optimizer::wants_curvature_estimate: a forward/backward of `curvature_tokens`
  // [B, T] against labels sampled from the model's own output, the step's gradients kept aside
  // meanwhile), the data-parallel gradient average, the global gradient-norm clip
  // (trainer.grad_clip) over the model's and the trainables' parameters, every optimizer's step and
  // zero_grad. Returns the gradient norm before clipping (0-d, on the device: reading it syncs).
  // May be called several times in one step (several updates per batch); the curvature pass runs
  // at most once per step.
  virtual at::Tensor optimizer_step(const at::Tensor& curvature_tokens = {}) = 0;
  // Finishes step `step`. On log steps (log_every, eval steps, the last step) calls `metrics` (so
  // values are read from the device only then), adds lr, tokens/s, ms/step and mfu, averages over
  // ranks, writes a metrics.jsonl line and prints the progress line; a non-finite loss or grad_norm
  // stops the run with an Error naming the last good checkpoint. Saves a checkpoint every
  // save_every steps and at the last step. `tokens`: the tokens this rank's step processed.
  using MetricsFn = std::function<std::map<std::string, double>()>;
  virtual void end_step(int64_t step, const MetricsFn& metrics, int64_t tokens) = 0;
  virtual bool is_log_step(int64_t step) const = 0;
  virtual bool is_eval_step(int64_t step) const = 0;
  // A metrics line outside end_step (a step-0 evaluation: m["step"] = 0) to the run's trackers
  // (metrics.jsonl, TensorBoard), and its console line; rank 0 writes it.
  virtual void write_metrics(const std::map<std::string, double>& metrics) = 0;
  // The mean over ranks of a value every rank computed (the value itself on one process). A
  // collective: every rank calls it at the same point.
  virtual double mean_over_ranks(double value) const = 0;

  // ---- data -------------------------------------------------------------------------------------
  virtual int64_t seq_len() const = 0;  // data.seq_len
  // Micro-batch `micro` (of `micro_steps` per step) of step `step`: `batch_size` windows of this
  // rank, a pure function of (seed, step, micro, rank), so a resumed run draws the same. On the device.
  // data.format text: windows of seq_len + 1 tokens cut into x and y. The examples formats (chat,
  // prompt_completion, preference): one example per row, x padded to seq_len, y = -1 where a token
  // carries no loss (the prompt, the padding); next_token_loss ignores those. A preference example
  // is two rows, chosen then rejected: batch_size examples are 2 batch_size rows.
  virtual Batch train_batch(int64_t batch_size, int64_t micro_steps, int64_t step, int64_t micro) = 0;
  // Validation batch `index` (0, 1, ...: the same rows every call) of `batch_size` windows or examples.
  virtual Batch val_batch(int64_t batch_size, int64_t index) = 0;
  // Mean validation loss over `batches` fixed batches of `batch_size` windows (averaged over ranks).
  virtual double evaluate_lm(int64_t batches, int64_t batch_size) = 0;
  // Rows per example of the data: 2 for data.format preference (chosen, rejected), else 1.
  virtual int64_t rows_per_example() const = 0;
  // A host tensor on the run's device (through pinned memory without blocking, on CUDA).
  virtual at::Tensor to_device(const at::Tensor& host_tensor) const = 0;

  // ---- what a trainer asks the host for ---------------------------------------------------------
  // The experiment's task (an Error naming the missing `task:` section when it has none).
  virtual std::shared_ptr<Task> task() = 0;
  // The checkpoint file the run's weights started from (trainer.init_from; "" when none).
  virtual std::string start_checkpoint() const = 0;
  // A model of the run's config with the weights of `checkpoint` (a run folder or file), on the
  // run's device in its precision. `trainable` false: eval mode, no gradients (a frozen reference).
  virtual std::shared_ptr<LMModel> load_model(const std::string& checkpoint, bool trainable) = 0;
  // A generator for `model` (one of this run's), reused across calls; owned by the caller.
  virtual std::unique_ptr<Generator> make_generator(const LMModel& model) = 0;
};

}  // namespace linearnexus
