// The `ppo` trainer: PPO with a learned value function, as in RLHF (Ouyang et al., Stiennon et al.).
//
// Per step: sample group_size completions for each of prompts_per_step task prompts; each token's
// reward is -beta * (log pi_old - log pi_ref) (a per-token KL penalty to the frozen reference) plus,
// at the completion's last token, the task's score. GAE(gamma, lambda) over those rewards and the
// value head's estimates gives advantages (whitened over the batch) and value targets. Then
// ppo_epochs passes, in `minibatches` shuffled minibatches each, minimise
//   clipped policy loss + value_coef * clipped value loss - entropy_coef * entropy
// stopping early when the approximate KL to the sampling policy passes 1.5 * target_kl.
//
// The value head is a linear map of the policy trunk's final hidden state (value_model: trunk), or
// of a separate copy of the starting model trained only by the value loss (value_model: separate).
#include <linearnexus/checkpoint.h>
#include <linearnexus/error.h>
#include <linearnexus/plugin.h>
#include <linearnexus/plugin_host.h>
#include <linearnexus/rl.h>
#include <linearnexus/session.h>
#include <linearnexus/trainer.h>

#include <ATen/CPUGeneratorImpl.h>

namespace linearnexus {
namespace {

// The rows `idx` of a packed rollout (a minibatch).
PackedRollout select_rows(const PackedRollout& r, const at::Tensor& idx) {
  return {r.input.index_select(0, idx), r.target.index_select(0, idx), r.gather.index_select(0, idx),
          r.mask.index_select(0, idx)};
}

// The critic: a scalar head on a trunk's final hidden state. [N, Lg, C] -> [N, Lg]
struct ValueFunction {
  std::shared_ptr<LMModel> separate_trunk;  // null: the policy's own trunk
  torch::nn::Linear head{nullptr};
  std::vector<NamedParameter> params;       // what the value optimizer updates
  std::shared_ptr<Optimizer> optimizer;

  at::Tensor values(LMModel& policy, const PackedRollout& r, const at::Tensor& policy_hidden) {
    at::Tensor h = policy_hidden;
    if (separate_trunk) h = to_completion_layout(separate_trunk->forward_hidden(r.input.to(h.device())), r);
    return head(h).squeeze(-1);
  }
  TensorMap state() const {
    TensorMap t;
    t["value.head.weight"] = head->weight;
    t["value.head.bias"] = head->bias;
    if (separate_trunk)
      for (const auto& [k, v] : model_tensors(*separate_trunk, "value.trunk.")) t[k] = v;
    for (const auto& [k, v] : optimizer->state_dict()) t["value_optim." + k] = v;
    return t;
  }
  void load(const TensorMap& extra, const at::Device& device) {
    if (!extra.count("value.head.weight")) return;  // a fresh run
    torch::NoGradGuard g;
    head->weight.copy_(extra.at("value.head.weight"));
    head->bias.copy_(extra.at("value.head.bias"));
    if (separate_trunk) load_model_tensors(*separate_trunk, extra, "checkpoint (value trunk)", "value.trunk.");
    TensorMap optim;
    for (const auto& [k, v] : extra)
      if (k.rfind("value_optim.", 0) == 0) optim[k.substr(12)] = v.to(device);
    optimizer->load_state_dict(optim);
  }
};

class PPOTrainer : public Trainer {
 public:
  void run(TrainContext& ctx) override {
    const Params& t = ctx.experiment->trainer;
    const int64_t G = t.get_int("group_size"), n_prompts = t.get_int("prompts_per_step"), max_new = t.get_int("max_new_tokens");
    const int64_t epochs = t.get_int("ppo_epochs"), minibatches = t.get_int("minibatches");
    const double beta = t.get_float("beta"), clip_eps = t.get_float("clip_eps"), temperature = t.get_float("temperature");
    const double value_clip = t.get_float("value_clip"), value_coef = t.get_float("value_coef");
    const double entropy_coef = t.get_float("entropy_coef"), target_kl = t.get_float("target_kl");
    const uint64_t seed = static_cast<uint64_t>(ctx.experiment->top.get_int("seed"));
    const std::string& where = ctx.experiment->source;
    if (G < 1 || n_prompts < 1 || epochs < 1 || minibatches < 1)
      throw Error(where + ": trainer.group_size, prompts_per_step, ppo_epochs and minibatches must be at least 1");
    if (minibatches > G * n_prompts)
      throw Error(where + ": trainer.minibatches (" + std::to_string(minibatches) + ") is more than the " +
                  std::to_string(G * n_prompts) + " completions of a step (prompts_per_step x group_size)");

    auto task = make_experiment_task(ctx, "ppo");
    TrainingRun run(ctx);
    TensorMap extra;
    const int64_t start = run.resume(&extra);
    auto ref = load_reference_model(ctx, "ppo");
    const Tokenizer& tok = *ctx.data.tokenizer;
    auto reward_model = load_reward_model(ctx);

    ValueFunction vf;
    const int64_t C = ctx.model->config().dims.hidden_size;
    vf.head = torch::nn::Linear(C, 1);
    {
      torch::NoGradGuard g;
      vf.head->weight.zero_();  // start from V = 0: no value is better than a random one
      vf.head->bias.zero_();
    }
    vf.head->to(ctx.device);
    for (const auto& kv : vf.head->named_parameters()) vf.params.push_back({"value_head." + kv.key(), kv.value(), {}});
    if (t.get_string("value_model") == "separate") {
      // A copy of the starting model (the reference's weights) as the critic's own trunk.
      vf.separate_trunk = std::make_shared<LMModel>(ctx.model->config(), ctx.host->registry());
      load_model_tensors(*vf.separate_trunk, model_tensors(*ref), "the reference model");
      vf.separate_trunk->to(ctx.device);
      for (auto& np : named_parameters_of(*vf.separate_trunk)) {
        np.name = "value_trunk." + np.name;
        vf.params.push_back(np);
      }
    }
    vf.optimizer = ctx.host->registry().make_optimizer(ctx.experiment->optimizer_name, vf.params, ctx.experiment->optimizer);
    vf.load(extra, ctx.device);
    std::vector<NamedParameter> all_params = ctx.params;
    all_params.insert(all_params.end(), vf.params.begin(), vf.params.end());

    if (start == 0) run.write_metrics({{"step", 0}, {"eval_accuracy", task_accuracy(*ctx.model, *task, tok, max_new)}});
    ctx.model->train();
    for (int64_t step = start; step < run.last_step(); ++step) {
      const double lr = run.begin_step(step);
      vf.optimizer->set_lr_multiplier(ctx.optimizer->base_lr() > 0 ? lr / ctx.optimizer->base_lr() : 1.0);
      Rollout ro = collect_rollout(*ctx.model, *task, tok, step_examples(*task, seed, step, n_prompts), G,
                                   rollout_sampling(t, seed, step), reward_model.get());
      const auto& packed = ro.packed;
      auto mask = packed.mask.to(ctx.device);  // [N, Lg]
      const int64_t N = mask.size(0);
      at::Tensor old_logp, ref_logp, old_values, advantages, returns;
      {
        torch::NoGradGuard g;
        PolicyOutput old = policy_forward(*ctx.model, packed, temperature);
        old_logp = old.logp;                                                  // [N, Lg]
        old_values = vf.values(*ctx.model, packed, old.hidden) * mask;        // [N, Lg]
        ref_logp = policy_forward(*ref, packed, temperature).logp;            // [N, Lg]
        // Per-token rewards: the KL penalty everywhere, the task's score on the last real token.
        auto rewards = -beta * (old_logp - ref_logp) * mask;
        auto last = (mask.to(at::kLong).sum(1) - 1).clamp_min(0).unsqueeze(1);  // [N, 1]
        rewards = rewards.scatter_add(1, last, ro.rewards.to(ctx.device).unsqueeze(1) * mask.any(1, true).to(at::kFloat));
        GAE gae = compute_gae(rewards, old_values, mask, t.get_float("gamma"), t.get_float("lambda"));
        advantages = masked_whiten(gae.advantages, mask);
        returns = gae.returns;
      }
      at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed * 7919ull + static_cast<uint64_t>(step));
      double pol_sum = 0, vloss_sum = 0, clip_sum = 0, ent_sum = 0, approx_kl = 0, grad_norm = 0;
      int64_t updates = 0;
      bool stop = false;
      for (int64_t epoch = 0; epoch < epochs && !stop; ++epoch) {
        auto perm = at::randperm(N, gen, at::TensorOptions().dtype(at::kLong));
        for (int64_t mb = 0; mb < minibatches && !stop; ++mb) {
          auto idx = perm.narrow(0, mb * N / minibatches, (mb + 1) * N / minibatches - mb * N / minibatches);
          auto idx_d = idx.to(ctx.device);
          PackedRollout sub = select_rows(packed, idx);
          auto m = mask.index_select(0, idx_d);
          PolicyOutput out = policy_forward(*ctx.model, sub, temperature);
          auto old_lp = old_logp.index_select(0, idx_d);
          ClippedLoss cl = clipped_policy_loss(out.logp, old_lp, advantages.index_select(0, idx_d), clip_eps);
          auto policy_loss = masked_mean(cl.loss, m);
          // Clipped value loss: the new estimate may move at most value_clip from the old one.
          auto v = vf.values(*ctx.model, sub, out.hidden);
          auto v_old = old_values.index_select(0, idx_d), ret = returns.index_select(0, idx_d);
          auto v_clipped = v_old + (v - v_old).clamp(-value_clip, value_clip);
          auto value_loss = 0.5 * masked_mean(at::max((v - ret).pow(2), (v_clipped - ret).pow(2)), m);
          auto entropy = masked_mean(out.entropy, m);
          (policy_loss + value_coef * value_loss - entropy_coef * entropy).backward();
          grad_norm = clip_grad_norm(all_params, t.get_float("grad_clip")).item<double>();
          ctx.optimizer->step();
          vf.optimizer->step();
          ctx.optimizer->zero_grad(ctx.params);
          vf.optimizer->zero_grad(vf.params);
          pol_sum += policy_loss.item<double>(), vloss_sum += value_loss.item<double>();
          clip_sum += masked_mean(cl.clipped.to(at::kFloat), m).item<double>();
          ent_sum += entropy.item<double>();
          ++updates;
          // How far the policy moved from the sampling one (the k3 estimate on this minibatch).
          approx_kl = masked_mean(k3_kl(out.logp.detach(), old_lp), m).item<double>();
          stop = target_kl > 0 && approx_kl > 1.5 * target_kl;
        }
      }
      const double n = static_cast<double>(std::max<int64_t>(updates, 1));
      run.end_step(
          step,
          [&] {
            std::map<std::string, double> metrics{
                {"policy_loss", pol_sum / n},
                {"value_loss", vloss_sum / n},
                {"grad_norm", grad_norm},
                {"reward_mean", ro.rewards.mean().item<double>()},
                {"reward_std", ro.rewards.std().item<double>()},
                {"train_accuracy", ro.correct.mean().item<double>()},
                {"kl", masked_mean(k3_kl(old_logp, ref_logp), mask).item<double>()},
                {"approx_kl", approx_kl},
                {"ppo_updates", static_cast<double>(updates)},
                {"clip_frac", clip_sum / n},
                {"entropy", ent_sum / n},
                {"response_len", packed.mask.to(at::kFloat).sum(1).mean().item<double>()}};
            if (run.is_eval_step(step)) metrics["eval_accuracy"] = task_accuracy(*ctx.model, *task, tok, max_new);
            return metrics;
          },
          packed.input.numel(), vf.state());
    }
  }
};

void register_ppo(Registry& r) {
  Schema s = rl_common_schema();
  s.push_back({"value_model", ParamType::String, "trunk", "value head on the policy's trunk, or on a separate copy of the starting model", {"trunk", "separate"}});
  s.push_back({"gamma", ParamType::Float, "1.0", "discount of GAE"});
  s.push_back({"lambda", ParamType::Float, "0.95", "GAE's lambda (bias / variance of the advantages)"});
  s.push_back({"ppo_epochs", ParamType::Int, "2", "passes over each generated batch"});
  s.push_back({"minibatches", ParamType::Int, "2", "minibatches per pass (one optimizer step each)"});
  s.push_back({"value_coef", ParamType::Float, "0.5", "weight of the value loss"});
  s.push_back({"value_clip", ParamType::Float, "0.2", "how far a value estimate may move from the old one in the clipped value loss"});
  s.push_back({"entropy_coef", ParamType::Float, "0.0", "weight of the entropy bonus"});
  s.push_back({"target_kl", ParamType::Float, "0.0", "stop a step's passes once the approximate KL to the sampling policy exceeds 1.5 x this (0 = never)"});
  r.add_trainer("ppo", "PPO with a value head, GAE and a per-token KL penalty to a reference, on the experiment's task", s,
                [](const Params&) { return std::make_shared<PPOTrainer>(); });
}

}  // namespace
}  // namespace linearnexus

LINEARNEXUS_PLUGIN("ppo", "1.0.0", "PPO: clipped policy and value losses, GAE, KL to a reference", linearnexus::register_ppo)
