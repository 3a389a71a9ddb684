// The `sft` trainer: next-token cross-entropy on the experiment's text data.
#include <linearnexus/data.h>
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
        eval_batches_(t.get_int("eval_batches")),
        grad_clip_(t.get_float("grad_clip")) {}

  void run(TrainContext& ctx) override {
    TrainingRun run(ctx);
    const int64_t start = run.resume();
    const BatchSpec spec = run.batch_spec(batch_size_, grad_accum_);
    const int64_t step_tokens = batch_size_ * spec.seq_len * grad_accum_;
    ctx.model->train();
    for (int64_t step = start; step < run.last_step(); ++step) {
      run.begin_step(step);
      if (ctx.optimizer->wants_curvature_estimate(step)) {
        // The optimizer asked for its curvature-estimate pass (Sophia's Gauss-Newton-Bartlett
        // estimator): one forward/backward on this step's first micro-batch against labels sampled
        // from the model's own predictions; the optimizer reads the resulting .grad. Before the
        // step's real gradients, so .grad holds only the estimate's.
        Batch b = run.train_batch(spec, step, 0);
        ctx.optimizer->zero_grad(ctx.params);
        run.backward(sampled_label_loss(ctx.model->forward(to_device(b.x, ctx.device))));
        ctx.optimizer->update_curvature(batch_size_ * spec.seq_len);
        ctx.optimizer->zero_grad(ctx.params);
      }
      at::Tensor loss_sum = at::zeros({}, at::TensorOptions().device(ctx.device));
      for (int64_t micro = 0; micro < grad_accum_; ++micro) {
        Batch b = run.train_batch(spec, step, micro);
        auto loss = ctx.model->next_token_loss(to_device(b.x, ctx.device), to_device(b.y, ctx.device));
        run.backward(loss / static_cast<double>(grad_accum_), micro + 1 == grad_accum_);
        loss_sum += loss.detach();
      }
      auto grad_norm = clip_grad_norm(ctx.params, grad_clip_);
      ctx.optimizer->step();
      ctx.optimizer->zero_grad(ctx.params);
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
  const double grad_clip_;
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
