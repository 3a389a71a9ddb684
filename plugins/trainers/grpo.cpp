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
#include <linearnexus/plugin_host.h>
#include <linearnexus/rl.h>
#include <linearnexus/trainer.h>

#include <chrono>

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

  void run(TrainContext& ctx) override {
    const int64_t G = rl_.group_size;
    const uint64_t seed = static_cast<uint64_t>(ctx.experiment->top.get_int("seed"));
    auto task = make_experiment_task(ctx, "grpo");
    TrainingRun run(ctx);
    const int64_t start = run.resume();
    auto ref = load_reference_model(ctx, rl_.reference, "grpo");
    const Tokenizer& tok = *ctx.data.tokenizer;
    log_initial_accuracy(run, start, *ctx.model, *task, tok, rl_.max_new_tokens);

    ctx.model->train();
    for (int64_t step = start; step < run.last_step(); ++step) {
      run.begin_step(step);
      const auto t0 = std::chrono::steady_clock::now();
      Rollout ro = collect_rollout(*ctx.model, *task, tok, rank_examples(ctx, *task, seed, step, rl_.prompts_per_step), G,
                                   rl_.sampling(seed, step, ctx.rank));
      // The rewards are scored on the host from the completions' text, so the generation has finished
      // here: this wall time is the whole rollout (generation + scoring + packing).
      const double rollout_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      auto mask = ro.packed.mask.to(ctx.device);                                          // [N, Lg]
      auto adv = group_advantages(ro.rewards, G, scale_rewards_).to(ctx.device).unsqueeze(1);  // [N, 1]
      at::Tensor ref_logp, old_logp;
      {
        torch::NoGradGuard g;
        ref_logp = policy_forward(*ref, ro.packed, rl_.temperature).logp;  // [N, Lg]
      }
      at::Tensor loss, kl, clip_frac, entropy, grad_norm;
      for (int64_t it = 0; it < iterations_; ++it) {
        PolicyOutput out = policy_forward(*ctx.model, ro.packed, rl_.temperature);
        // The policy that sampled is the one before this batch's first update.
        if (it == 0) old_logp = out.logp.detach();
        ClippedLoss cl = clipped_policy_loss(out.logp, old_logp, adv, rl_.clip_eps);
        auto kl_tok = k3_kl(out.logp, ref_logp);
        loss = reduce_loss(cl.loss + rl_.beta * kl_tok, mask, loss_norm_);
        run.backward(loss);
        grad_norm = clip_grad_norm(ctx.params, rl_.grad_clip);
        ctx.optimizer->step();
        ctx.optimizer->zero_grad(ctx.params);
        kl = masked_mean(kl_tok.detach(), mask);
        clip_frac = masked_mean(cl.clipped.to(at::kFloat), mask);
        entropy = masked_mean(out.entropy.detach(), mask);
      }
      run.end_step(
          step,
          [&] {
            std::map<std::string, double> m = rollout_metrics(ro);
            m["rollout_ms"] = rollout_ms;
            m["loss"] = loss.item<double>();
            m["grad_norm"] = grad_norm.item<double>();
            m["kl"] = kl.item<double>();
            m["clip_frac"] = clip_frac.item<double>();
            m["entropy"] = entropy.item<double>();
            if (run.is_eval_step(step)) m["eval_accuracy"] = task_accuracy(*ctx.model, *task, tok, rl_.max_new_tokens);
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
  s.push_back({"loss_norm", ParamType::String, "sequence", "average the token losses per sequence then over sequences, or over all tokens", {"sequence", "token"}});
  r.add_trainer("grpo", "Group Relative Policy Optimization on the experiment's task (no value model)", s,
                [](const Params& t) { return std::make_shared<GRPOTrainer>(t); });
}

}  // namespace
}  // namespace linearnexus

LINEARNEXUS_PLUGIN("grpo", "1.0.0", "GRPO: group-relative policy optimisation with a KL to a reference", linearnexus::register_grpo)
