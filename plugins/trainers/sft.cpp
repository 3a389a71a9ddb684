// The `sft` trainer: next-token cross-entropy on the experiment's data: a text's windows, or
// examples (chat, prompt_completion) whose prompt and padding carry no loss (TrainingRun::train_batch).
#include <linearnexus/error.h>
#include <linearnexus/loss.h>
#include <linearnexus/plugin.h>
#include <linearnexus/trainer.h>

namespace linearnexus {
namespace {

class SFTTrainer : public Trainer {
 public:
  explicit SFTTrainer(const Params& t)
      : batch_size_(t.get_int("batch_size")),
        grad_accum_(t.get_int("grad_accum")),
        eval_batches_(t.get_int("eval_batches")) {}

  void run(TrainingRun& run) override {
    if (run.rows_per_example() != 1)
      throw Error(
          "trainer 'sft' trains on one sequence per example; data.format preference (chosen / rejected pairs) is " +
          std::string("for trainer 'dpo' (or use data.format prompt_completion with the chosen answers)"));
    const int64_t start = run.resume();
    const int64_t step_tokens = batch_size_ * run.seq_len() * grad_accum_;
    LMModel& model = run.model();
    // Where the model starts (as dpo and the RL trainers log it): the curve's first point. The
    // validation batches are fixed and draw no random numbers, so the training is unchanged.
    if (start == 0) run.write_metrics({{"step", 0}, {"val_loss", run.evaluate_lm(eval_batches_, batch_size_)}});
    model.train();
    for (int64_t step = start; step < run.last_step(); ++step) {
      run.begin_step(step);
      at::Tensor loss_sum = at::zeros({}, at::TensorOptions().device(run.device()));
      at::Tensor first_x;  // the step's first micro-batch: the curvature estimate's input, if asked for
      for (int64_t micro = 0; micro < grad_accum_; ++micro) {
        Batch b = run.train_batch(batch_size_, grad_accum_, step, micro);
        if (micro == 0) first_x = b.x;
        auto loss = model.next_token_loss(b.x, b.y);
        run.backward(loss / static_cast<double>(grad_accum_), micro + 1 == grad_accum_);
        loss_sum += loss.detach();
      }
      auto grad_norm = run.optimizer_step(first_x);
      run.end_step(
          step,
          [&] {
            std::map<std::string, double> m{{"loss", loss_sum.item<double>() / static_cast<double>(grad_accum_)},
                                            {"grad_norm", grad_norm.item<double>()}};
            if (run.is_eval_step(step)) m["val_loss"] = run.evaluate_lm(eval_batches_, batch_size_);
            return m;
          },
          step_tokens);
    }
  }

 private:
  const int64_t batch_size_, grad_accum_, eval_batches_;
};

void register_sft(Registry& r) {
  r.add_trainer("sft", "supervised next-token training (cross-entropy) on data.path",
                {{"batch_size", ParamType::Int, "16", "sequences per micro-batch", {}, 1},
                 {"grad_accum", ParamType::Int, "1", "micro-batches per optimizer step", {}, 1},
                 {"eval_batches", ParamType::Int, "20", "batches per validation pass", {}, 1}},
                [](const Params& t) { return std::make_shared<SFTTrainer>(t); });
}

}  // namespace
}  // namespace linearnexus

LINEARNEXUS_PLUGIN("sft", "1.0.0", "next-token (SFT / pre-training) trainer", linearnexus::register_sft)
