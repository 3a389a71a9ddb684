// The `sft` trainer: next-token cross-entropy on the experiment's text data.
#include <linearnexus/data.h>
#include <linearnexus/plugin.h>
#include <linearnexus/trainer.h>

namespace linearnexus {
namespace {

class SFTTrainer : public Trainer {
 public:
  void run(TrainContext& ctx) override {
    TrainingRun run(ctx);
    const int64_t start = run.resume();
    const Params& t = ctx.experiment->trainer;
    const int64_t B = t.get_int("batch_size"), accum = std::max<int64_t>(1, t.get_int("grad_accum"));
    const int64_t T = ctx.experiment->data.get_int("seq_len");
    const double clip = t.get_float("grad_clip");
    ctx.model->train();
    for (int64_t step = start; step < run.last_step(); ++step) {
      run.begin_step(step);
      if (ctx.optimizer->wants_curvature_estimate(step)) {
        // The optimizer asked for its curvature-estimate pass (Sophia's Gauss-Newton-Bartlett
        // estimator): one forward/backward on this step's first micro-batch against labels sampled
        // from the model's own predictions; the optimizer reads the resulting .grad. Before the
        // step's real gradients, so .grad holds only the estimate's.
        Batch b = run.train_batch(step, 0);
        ctx.optimizer->zero_grad(ctx.params);
        sampled_label_loss(ctx.model->forward(to_device(b.x, ctx.device))).backward();
        ctx.optimizer->update_curvature(B * T);
        ctx.optimizer->zero_grad(ctx.params);
      }
      at::Tensor loss_sum = at::zeros({}, at::TensorOptions().device(ctx.device));
      for (int64_t micro = 0; micro < accum; ++micro) {
        Batch b = run.train_batch(step, micro);
        auto loss = ctx.model->next_token_loss(to_device(b.x, ctx.device), to_device(b.y, ctx.device));
        (loss / static_cast<double>(accum)).backward();
        loss_sum += loss.detach();
      }
      auto grad_norm = clip_grad_norm(ctx.params, clip);
      ctx.optimizer->step();
      ctx.optimizer->zero_grad(ctx.params);
      run.end_step(
          step,
          [&] {
            std::map<std::string, double> m{{"loss", loss_sum.item<double>() / static_cast<double>(accum)},
                                            {"grad_norm", grad_norm.item<double>()}};
            if (run.is_eval_step(step)) m["val_loss"] = run.evaluate_lm();
            return m;
          },
          B * T * accum);
    }
  }
};

void register_sft(Registry& r) {
  r.add_trainer("sft", "supervised next-token training (cross-entropy) on data.path", {},
                [](const Params&) { return std::make_shared<SFTTrainer>(); });
}

}  // namespace
}  // namespace linearnexus

LINEARNEXUS_PLUGIN("sft", "1.0.0", "next-token (SFT / pre-training) trainer", linearnexus::register_sft)
