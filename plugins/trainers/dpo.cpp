// The `dpo` trainer: Direct Preference Optimization (dpo_loss.h) on data.format: preference. Each
// example is a prompt with a chosen and a rejected completion, two rows of train_batch; the policy
// starts from trainer.init_from (an SFT run, or an imported model) and is pulled towards the chosen
// completions relative to a frozen copy of where it started (the reference).
#include <linearnexus/error.h>
#include <linearnexus/log.h>
#include <linearnexus/loss.h>
#include <linearnexus/model.h>
#include <linearnexus/plugin.h>
#include <linearnexus/trainer.h>

#include "dpo_loss.h"

namespace linearnexus {
namespace {

// Rows [2N, T] as chosen / rejected pairs (rows 2i, 2i+1): each row's log-likelihood of its
// trained tokens [2N] and how many there are [2N].
struct PairLogProbs {
  at::Tensor chosen, rejected, n_chosen, n_rejected;
};
PairLogProbs pair_log_probs(LMModel& model, const Batch& b) {
  // x, y: [2N, T] -> logits [2N, T, V] -> per row [2N]
  const auto per_row = token_log_probs(model.forward(b.x), b.y).sum(1);
  const auto counts = b.y.ne(-1).sum(1);
  return {per_row.slice(0, 0, per_row.size(0), 2), per_row.slice(0, 1, per_row.size(0), 2),
          counts.slice(0, 0, counts.size(0), 2), counts.slice(0, 1, counts.size(0), 2)};
}

class DPOTrainer : public Trainer {
 public:
  explicit DPOTrainer(const Params& t)
      : batch_size_(t.get_int("batch_size")),
        grad_accum_(t.get_int("grad_accum")),
        eval_batches_(t.get_int("eval_batches")),
        beta_(t.get_float("beta")),
        label_smoothing_(t.get_float("label_smoothing")),
        rpo_alpha_(t.get_float("rpo_alpha")),
        loss_type_(t.get_string("loss_type")),
        ref_checkpoint_(t.get_string("ref_checkpoint")) {}

  void run(TrainingRun& run) override {
    if (run.rows_per_example() != 2)
      throw Error("trainer 'dpo' learns from preference pairs: set data.format: preference (JSON Lines rows " +
                  std::string("{\"prompt\", \"chosen\", \"rejected\"})"));
    const std::string reference = !ref_checkpoint_.empty() ? ref_checkpoint_ : run.start_checkpoint();
    if (reference.empty())
      throw Error(
          "trainer 'dpo' starts from a trained model: set trainer.init_from to its checkpoint (an SFT run " +
          std::string(
              "folder, or one made by convert hf-import); it is also the reference unless trainer.ref_checkpoint names another"));
    const int64_t start = run.resume();
    ref_ = run.load_model(reference, /*trainable=*/false);
    log_info("dpo: reference model " + reference);
    LMModel& model = run.model();
    if (start == 0) {  // where the policy starts (== the reference, unless ref_checkpoint names another)
      auto m = evaluate(run);
      m["step"] = 0;
      run.write_metrics(m);
    }
    model.train();
    const int64_t step_tokens = 2 * batch_size_ * run.seq_len() * grad_accum_;
    for (int64_t step = start; step < run.last_step(); ++step) {
      run.begin_step(step);
      Sums sums(run.device());
      at::Tensor first_x;
      for (int64_t micro = 0; micro < grad_accum_; ++micro) {
        Batch b = run.train_batch(batch_size_, grad_accum_, step, micro);
        if (micro == 0) first_x = b.x;
        auto loss = pair_loss(model, b, sums);
        run.backward(loss / static_cast<double>(grad_accum_), micro + 1 == grad_accum_);
      }
      auto grad_norm = run.optimizer_step(first_x);
      run.end_step(
          step,
          [&] {
            auto m = sums.metrics("", static_cast<double>(grad_accum_));
            m["grad_norm"] = grad_norm.item<double>();
            if (run.is_eval_step(step)) {
              for (const auto& [k, v] : evaluate(run)) m[k] = v;
            }
            return m;
          },
          step_tokens);
    }
  }

 private:
  // Running sums of a step's (or an evaluation's) per-batch means, on the device until logged:
  // TRL's metrics (the implicit rewards, their accuracy: 0 at the start, where every reward is 0,
  // and margin; the completions' log-likelihoods) and preference_accuracy, how often the policy
  // itself finds the chosen completion likelier than the rejected one.
  struct Sums {
    at::Tensor loss, chosen, rejected, accuracy, margin, logp_chosen, logp_rejected, preferred;
    explicit Sums(const at::Device& d) {
      for (auto* t : {&loss, &chosen, &rejected, &accuracy, &margin, &logp_chosen, &logp_rejected, &preferred})
        *t = at::zeros({}, at::TensorOptions().device(d));
    }
    std::map<std::string, double> metrics(const std::string& prefix, double n) const {
      return {{prefix + "loss", loss.item<double>() / n},
              {prefix + "reward_chosen", chosen.item<double>() / n},
              {prefix + "reward_rejected", rejected.item<double>() / n},
              {prefix + "reward_accuracy", accuracy.item<double>() / n},
              {prefix + "reward_margin", margin.item<double>() / n},
              {prefix + "logp_chosen", logp_chosen.item<double>() / n},
              {prefix + "logp_rejected", logp_rejected.item<double>() / n},
              {prefix + "preference_accuracy", preferred.item<double>() / n}};
    }
  };

  // The mean DPO loss of one batch of pairs (plus rpo_alpha times the chosen completions' NLL per
  // token: RPO, Pang et al. 2024, which keeps the chosen answers likely); adds to `sums`.
  at::Tensor pair_loss(LMModel& model, const Batch& b, Sums& sums) {
    PairLogProbs ref;
    {
      torch::NoGradGuard g;
      ref = pair_log_probs(*ref_, b);
    }
    const PairLogProbs pol = pair_log_probs(model, b);
    const DPOTerms t = dpo_loss(pol.chosen, pol.rejected, ref.chosen, ref.rejected, pol.n_chosen, pol.n_rejected, beta_,
                                loss_type_, label_smoothing_);
    at::Tensor loss = t.loss.mean();
    if (rpo_alpha_ > 0) loss = loss - rpo_alpha_ * pol.chosen.sum() / pol.n_chosen.sum().clamp_min(1).to(at::kFloat);
    sums.loss += loss.detach();
    sums.chosen += t.reward_chosen.mean();
    sums.rejected += t.reward_rejected.mean();
    sums.accuracy += (t.reward_chosen > t.reward_rejected).to(at::kFloat).mean();
    sums.margin += (t.reward_chosen - t.reward_rejected).mean();
    sums.logp_chosen += pol.chosen.detach().mean();
    sums.logp_rejected += pol.rejected.detach().mean();
    sums.preferred += (pol.chosen > pol.rejected).to(at::kFloat).mean();
    return loss;
  }

  // val_loss, val_reward_accuracy, ... over eval_batches fixed validation batches, averaged over ranks.
  std::map<std::string, double> evaluate(TrainingRun& run) {
    torch::NoGradGuard g;
    LMModel& model = run.model();
    model.eval();
    Sums sums(run.device());
    for (int64_t i = 0; i < eval_batches_; ++i) pair_loss(model, run.val_batch(batch_size_, i), sums);
    model.train();
    auto m = sums.metrics("val_", static_cast<double>(eval_batches_));
    for (auto& [k, v] : m) v = run.mean_over_ranks(v);
    return m;
  }

  const int64_t batch_size_, grad_accum_, eval_batches_;
  const double beta_, label_smoothing_, rpo_alpha_;
  const std::string loss_type_, ref_checkpoint_;
  std::shared_ptr<LMModel> ref_;
};

void register_dpo(Registry& r) {
  r.add_trainer("dpo", "Direct Preference Optimization on data.format: preference, from trainer.init_from",
                {{"batch_size", ParamType::Int, "8", "preference pairs per micro-batch (2 rows each)", {}, 1},
                 {"grad_accum", ParamType::Int, "1", "micro-batches per optimizer step", {}, 1},
                 {"eval_batches", ParamType::Int, "10", "batches of pairs per validation pass", {}, 1},
                 {"beta", ParamType::Float, "0.1", "strength of the pull towards the reference (DPO's beta)", {}, 1e-6},
                 {"loss_type",
                  ParamType::String,
                  "sigmoid",
                  "sigmoid = DPO; ipo = IPO's squared loss on length-normalised log-ratios",
                  {"sigmoid", "ipo"}},
                 {"label_smoothing",
                  ParamType::Float,
                  "0.0",
                  "the probability that a pair's preference is flipped (conservative DPO; sigmoid only)",
                  {},
                  0.0,
                  0.5},
                 {"rpo_alpha",
                  ParamType::Float,
                  "0.0",
                  "weight of the chosen completions' NLL added to the loss (RPO; 0 = off)",
                  {},
                  0.0},
                 {"ref_checkpoint", ParamType::String, "\"\"",
                  "the frozen reference model (\"\" = trainer.init_from, the starting checkpoint)"}},
                [](const Params& t) { return std::make_shared<DPOTrainer>(t); });
}

}  // namespace
}  // namespace linearnexus

LINEARNEXUS_PLUGIN("dpo", "1.0.0", "Direct Preference Optimization trainer", linearnexus::register_dpo)
