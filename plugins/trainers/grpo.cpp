// The `grpo` trainer (DeepSeekMath's Group Relative Policy Optimization).
//
// Per step: draw prompts_per_step task prompts, sample group_size completions of each, score them
// with the task; a completion's advantage is its reward relative to its group's:
//   A_i = (r_i - mean(r_group)) / (std(r_group) + eps)        (scale_rewards: false drops the std)
// and every token of it carries A_i. Then num_iterations passes over the batch minimise
//   loss = norm( -min(ratio A, clip(ratio, 1 - clip_eps, 1 + clip_eps) A) + beta k3(policy, ref) )
// with ratio = pi / pi_old per token, pi_old the policy that sampled, and k3 the KL estimator
// exp(ref - logp) - (ref - logp) - 1 against the frozen reference model. No value model: the group
// mean is the baseline.
#include <linearnexus/error.h>
#include <linearnexus/plugin.h>
#include <linearnexus/trainer.h>

#include "rl.h"

namespace linearnexus {
namespace {

class GRPOTrainer : public Trainer {
 public:
  explicit GRPOTrainer(const Params& t)
      : rl_(t),
        iterations_(t.get_int("num_iterations")),
        scale_rewards_(t.get_bool("scale_rewards")),
        loss_norm_(t.get_string("loss_norm")) {
    if (rl_.group_size < 2)
      throw Error("trainer.group_size must be at least 2 for GRPO (got " + std::to_string(rl_.group_size) + ")");
  }

  void check_start(const TrainerStart& start) const override { check_rl_start(start, rl_, "grpo"); }

  void run(TrainingRun& run) override {
    const int64_t G = rl_.group_size;
    LMModel& policy = run.model();
    auto task = run.task();
    auto ref = load_reference_model(run, rl_, "grpo");
    const int64_t start = run.resume();
    auto generator = run.make_generator(policy);
    log_initial_accuracy(run, start, *generator, *task, rl_.max_new_tokens);

    policy.train();
    for (int64_t step = start; step < run.last_step(); ++step) {
      run.begin_step(step);
      Rollout ro =
          collect_rollout(*generator, *task, run.tokenizer(), rank_examples(run, *task, step, rl_.prompts_per_step), G,
                          rl_.sampling(run.seed(), step, run.rank()));
      auto input = run.to_device(ro.packed.input);                                             // [N, L]
      auto mask = run.to_device(ro.packed.mask);                                               // [N, Lg]
      auto adv = run.to_device(group_advantages(ro.rewards, G, scale_rewards_)).unsqueeze(1);  // [N, 1]
      at::Tensor ref_logp, old_logp;
      {
        torch::NoGradGuard g;
        ref_logp = policy_forward(*ref, ro.packed, rl_.temperature).logp;  // [N, Lg]
      }
      at::Tensor loss, kl, clip_frac, entropy, grad_norm;
      for (int64_t it = 0; it < iterations_; ++it) {
        PolicyOutput out = policy_forward(policy, ro.packed, rl_.temperature);
        // The policy that sampled is the one before this batch's first update.
        if (it == 0) old_logp = out.logp.detach();
        ClippedLoss cl = clipped_policy_loss(out.logp, old_logp, adv, rl_.clip_eps);
        auto kl_tok = k3_kl(out.logp, ref_logp);
        loss = reduce_loss(cl.loss + rl_.beta * kl_tok, mask, loss_norm_);
        run.backward(loss);
        grad_norm = run.optimizer_step(input);
        kl = masked_mean(kl_tok.detach(), mask);
        clip_frac = masked_mean(cl.clipped.to(at::kFloat), mask);
        entropy = masked_mean(out.entropy.detach(), mask);
      }
      run.end_step(
          step,
          [&] {
            std::map<std::string, double> m = rollout_metrics(ro);
            m["loss"] = loss.item<double>();
            m["grad_norm"] = grad_norm.item<double>();
            m["kl"] = kl.item<double>();
            m["clip_frac"] = clip_frac.item<double>();
            m["entropy"] = entropy.item<double>();
            if (run.is_eval_step(step))
              m["eval_accuracy"] = task_accuracy(*generator, *task, run.tokenizer(), rl_.max_new_tokens);
            return m;
          },
          ro.packed.input.numel());
    }
  }

 private:
  const RLSettings rl_;
  const int64_t iterations_;
  const bool scale_rewards_;
  const std::string loss_norm_;
};

void register_grpo(Registry& r) {
  Schema s = rl_common_schema();
  s.push_back({"num_iterations", ParamType::Int, "1", "optimisation passes (mu) over each generated batch", {}, 1});
  s.push_back({"scale_rewards", ParamType::Bool, "true", "divide group-centred rewards by the group's std"});
  s.push_back({"loss_norm",
               ParamType::String,
               "sequence",
               "average the token losses per sequence then over sequences, or over all tokens",
               {"sequence", "token"}});
  r.add_trainer("grpo", "Group Relative Policy Optimization on the experiment's task (no value model)", s,
                [](const Params& t) { return std::make_shared<GRPOTrainer>(t); });
}

}  // namespace
}  // namespace linearnexus

LINEARNEXUS_PLUGIN("grpo", "1.0.0", "GRPO: group-relative policy optimisation with a KL to a reference",
                   linearnexus::register_grpo)
