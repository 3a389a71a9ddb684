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

namespace linearnexus {
namespace {

class GRPOTrainer : public Trainer {
 public:
  void run(TrainContext& ctx) override {
    const Params& t = ctx.experiment->trainer;
    const int64_t G = t.get_int("group_size"), n_prompts = t.get_int("prompts_per_step");
    const int64_t iterations = t.get_int("num_iterations"), max_new = t.get_int("max_new_tokens");
    const double beta = t.get_float("beta"), clip_eps = t.get_float("clip_eps"), temperature = t.get_float("temperature");
    const std::string norm = t.get_string("loss_norm");
    const bool scale = t.get_bool("scale_rewards");
    const uint64_t seed = static_cast<uint64_t>(ctx.experiment->top.get_int("seed"));
    if (G < 2) throw Error(ctx.experiment->source + ": trainer.group_size must be at least 2 for GRPO (got " + std::to_string(G) + ")");
    if (n_prompts < 1 || iterations < 1)
      throw Error(ctx.experiment->source + ": trainer.prompts_per_step and trainer.num_iterations must be at least 1");

    auto task = make_experiment_task(ctx, "grpo");
    TrainingRun run(ctx);
    const int64_t start = run.resume();
    auto ref = load_reference_model(ctx, "grpo");
    const Tokenizer& tok = *ctx.data.tokenizer;
    auto reward_model = load_reward_model(ctx);
    if (start == 0) run.write_metrics({{"step", 0}, {"eval_accuracy", task_accuracy(*ctx.model, *task, tok, max_new)}});

    ctx.model->train();
    for (int64_t step = start; step < run.last_step(); ++step) {
      run.begin_step(step);
      Rollout ro = collect_rollout(*ctx.model, *task, tok, step_examples(*task, seed, step, n_prompts), G,
                                   rollout_sampling(t, seed, step), reward_model.get());
      auto mask = ro.packed.mask.to(ctx.device);                                 // [N, Lg]
      auto adv = group_advantages(ro.rewards, G, scale).to(ctx.device).unsqueeze(1);  // [N, 1]
      at::Tensor ref_logp, old_logp;
      {
        torch::NoGradGuard g;
        ref_logp = policy_forward(*ref, ro.packed, temperature).logp;  // [N, Lg]
      }
      at::Tensor loss, kl, clip_frac, entropy, grad_norm;
      for (int64_t it = 0; it < iterations; ++it) {
        PolicyOutput out = policy_forward(*ctx.model, ro.packed, temperature);
        // The policy that sampled is the one before this batch's first update.
        if (it == 0) old_logp = out.logp.detach();
        ClippedLoss cl = clipped_policy_loss(out.logp, old_logp, adv, clip_eps);
        auto kl_tok = k3_kl(out.logp, ref_logp);
        loss = reduce_loss(cl.loss + beta * kl_tok, mask, norm);
        loss.backward();
        grad_norm = clip_grad_norm(ctx.params, t.get_float("grad_clip"));
        ctx.optimizer->step();
        ctx.optimizer->zero_grad(ctx.params);
        kl = masked_mean(kl_tok.detach(), mask);
        clip_frac = masked_mean(cl.clipped.to(at::kFloat), mask);
        entropy = masked_mean(out.entropy.detach(), mask);
      }
      run.end_step(
          step,
          [&] {
            std::map<std::string, double> m{
                {"loss", loss.item<double>()},
                {"grad_norm", grad_norm.item<double>()},
                {"reward_mean", ro.rewards.mean().item<double>()},
                {"reward_std", ro.rewards.std().item<double>()},
                {"train_accuracy", ro.correct.mean().item<double>()},
                {"kl", kl.item<double>()},
                {"clip_frac", clip_frac.item<double>()},
                {"entropy", entropy.item<double>()},
                {"response_len", ro.packed.mask.to(at::kFloat).sum(1).mean().item<double>()}};
            if (run.is_eval_step(step)) m["eval_accuracy"] = task_accuracy(*ctx.model, *task, tok, max_new);
            return m;
          },
          ro.packed.input.numel());
    }
  }
};

void register_grpo(Registry& r) {
  Schema s = rl_common_schema();
  s.push_back({"num_iterations", ParamType::Int, "1", "optimisation passes (mu) over each generated batch"});
  s.push_back({"scale_rewards", ParamType::Bool, "true", "divide group-centred rewards by the group's std"});
  s.push_back({"loss_norm", ParamType::String, "sequence", "average the token losses per sequence then over sequences, or over all tokens", {"sequence", "token"}});
  r.add_trainer("grpo", "Group Relative Policy Optimization on the experiment's task (no value model)", s,
                [](const Params&) { return std::make_shared<GRPOTrainer>(); });
}

}  // namespace
}  // namespace linearnexus

LINEARNEXUS_PLUGIN("grpo", "1.0.0", "GRPO: group-relative policy optimisation with a KL to a reference", linearnexus::register_grpo)
