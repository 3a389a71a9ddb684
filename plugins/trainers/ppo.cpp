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
#include <linearnexus/distributed.h>
#include <linearnexus/error.h>
#include <linearnexus/plugin.h>
#include <linearnexus/plugin_host.h>
#include <linearnexus/rl.h>
#include <linearnexus/session.h>
#include <linearnexus/trainer.h>

#include <ATen/CPUGeneratorImpl.h>

#include <chrono>

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
  std::shared_ptr<GradientSync> grad_sync;  // data-parallel runs: averages `params`' gradients

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

// Builds the critic for `policy`: a zero-initialised head (no value is better than a random one),
// on the policy's trunk or on a copy of the reference model (value_model: separate), with its own
// optimizer of the experiment's kind; restored from `extra` when resuming.
ValueFunction make_value_function(TrainContext& ctx, const LMModel& reference, bool separate, const TensorMap& extra) {
  ValueFunction vf;
  const int64_t C = ctx.model->config().dims.hidden_size;
  vf.head = torch::nn::Linear(C, 1);
  {
    torch::NoGradGuard g;
    vf.head->weight.zero_();
    vf.head->bias.zero_();
  }
  vf.head->to(ctx.device);
  for (const auto& kv : vf.head->named_parameters()) vf.params.push_back({"value_head." + kv.key(), kv.value(), {}});
  if (separate) {
    vf.separate_trunk = std::make_shared<LMModel>(ctx.model->config(), ctx.host->registry());
    load_model_tensors(*vf.separate_trunk, model_tensors(reference), "the reference model");
    vf.separate_trunk->to(ctx.device);
    for (auto& np : named_parameters_of(*vf.separate_trunk)) {
      np.name = "value_trunk." + np.name;
      vf.params.push_back(np);
    }
  }
  vf.optimizer = ctx.host->registry().make_optimizer(ctx.experiment->optimizer_name, vf.params, ctx.experiment->optimizer);
  vf.load(extra, ctx.device);
  if (ctx.dist) {
    std::vector<at::Tensor> weights;  // the separate trunk and the head start equal on every rank
    for (const auto& np : vf.params) weights.push_back(np.param.detach());
    ctx.dist->broadcast(weights);
    vf.grad_sync = std::make_shared<GradientSync>(ctx.dist, vf.params, ctx.experiment->distributed.get_float("bucket_mb"));
  }
  return vf;
}

// What a step's rollout is scored with before the updates (all [N, Lg], no gradient).
struct ScoredRollout {
  at::Tensor mask, old_logp, ref_logp, old_values, advantages, returns;
};

// Averages over a step's PPO updates, for the metrics line.
struct UpdateStats {
  double policy_loss = 0, value_loss = 0, clip_frac = 0, entropy = 0, approx_kl = 0, grad_norm = 0;
  int64_t updates = 0;
};

class PPOTrainer : public Trainer {
 public:
  explicit PPOTrainer(const Params& t)
      : rl_(t),
        separate_value_model_(t.get_string("value_model") == "separate"),
        gamma_(t.get_float("gamma")),
        lambda_(t.get_float("lambda")),
        epochs_(t.get_int("ppo_epochs")),
        minibatches_(t.get_int("minibatches")),
        value_coef_(t.get_float("value_coef")),
        value_clip_(t.get_float("value_clip")),
        entropy_coef_(t.get_float("entropy_coef")),
        target_kl_(t.get_float("target_kl")) {
    if (minibatches_ > rl_.group_size * rl_.prompts_per_step)
      throw Error("trainer.minibatches (" + std::to_string(minibatches_) + ") is more than the " +
                  std::to_string(rl_.group_size * rl_.prompts_per_step) +
                  " completions of a step (prompts_per_step x group_size)");
  }

  void run(TrainContext& ctx) override {
    const uint64_t seed = static_cast<uint64_t>(ctx.experiment->top.get_int("seed"));
    auto task = make_experiment_task(ctx, "ppo");
    TrainingRun run(ctx);
    TensorMap extra;
    const int64_t start = run.resume(&extra);
    auto ref = load_reference_model(ctx, rl_.reference, "ppo");
    const Tokenizer& tok = *ctx.data.tokenizer;
    ValueFunction vf = make_value_function(ctx, *ref, separate_value_model_, extra);
    log_initial_accuracy(run, start, *ctx.model, *task, tok, rl_.max_new_tokens);

    ctx.model->train();
    for (int64_t step = start; step < run.last_step(); ++step) {
      const double lr = run.begin_step(step);
      vf.optimizer->set_lr_multiplier(ctx.optimizer->base_lr() > 0 ? lr / ctx.optimizer->base_lr() : 1.0);
      const auto t0 = std::chrono::steady_clock::now();
      Rollout ro = collect_rollout(*ctx.model, *task, tok, rank_examples(ctx, *task, seed, step, rl_.prompts_per_step),
                                   rl_.group_size, rl_.sampling(seed, step, ctx.rank));
      // Scored on the host from the completions' text: the generation has finished here (grpo.cpp).
      const double rollout_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      ScoredRollout sr = score(ctx, *ref, vf, ro);
      UpdateStats st = ppo_update(ctx, run, vf, ro.packed, sr, seed, step);
      const double n = static_cast<double>(std::max<int64_t>(st.updates, 1));
      run.end_step(
          step,
          [&] {
            std::map<std::string, double> m = rollout_metrics(ro);
            m["rollout_ms"] = rollout_ms;
            m["policy_loss"] = st.policy_loss / n;
            m["value_loss"] = st.value_loss / n;
            m["grad_norm"] = st.grad_norm;
            m["kl"] = masked_mean(k3_kl(sr.old_logp, sr.ref_logp), sr.mask).item<double>();
            m["approx_kl"] = st.approx_kl;
            m["ppo_updates"] = static_cast<double>(st.updates);
            m["clip_frac"] = st.clip_frac / n;
            m["entropy"] = st.entropy / n;
            if (run.is_eval_step(step)) m["eval_accuracy"] = task_accuracy(*ctx.model, *task, tok, rl_.max_new_tokens);
            return m;
          },
          ro.packed.input.numel(), vf.state());
    }
  }

 private:
  // The sampling policy's log-probs and values, the reference's log-probs, and from them the
  // per-token rewards (the KL penalty everywhere, the task's score on the last real token), GAE
  // advantages (whitened) and value targets.
  ScoredRollout score(TrainContext& ctx, LMModel& ref, ValueFunction& vf, const Rollout& ro) const {
    torch::NoGradGuard g;
    ScoredRollout s;
    s.mask = ro.packed.mask.to(ctx.device);  // [N, Lg]
    PolicyOutput old = policy_forward(*ctx.model, ro.packed, rl_.temperature);
    s.old_logp = old.logp;
    s.old_values = vf.values(*ctx.model, ro.packed, old.hidden) * s.mask;
    s.ref_logp = policy_forward(ref, ro.packed, rl_.temperature).logp;
    auto rewards = -rl_.beta * (s.old_logp - s.ref_logp) * s.mask;
    auto last = (s.mask.to(at::kLong).sum(1) - 1).clamp_min(0).unsqueeze(1);  // [N, 1]
    rewards = rewards.scatter_add(1, last, ro.rewards.to(ctx.device).unsqueeze(1) * s.mask.any(1, true).to(at::kFloat));
    GAE gae = compute_gae(rewards, s.old_values, s.mask, gamma_, lambda_);
    s.advantages = masked_whiten(gae.advantages, s.mask);
    s.returns = gae.returns;
    return s;
  }

  // ppo_epochs passes over the rollout in `minibatches` shuffled minibatches (seeded per step), one
  // policy + value update each; stops early once the approximate KL passes 1.5 x target_kl.
  UpdateStats ppo_update(TrainContext& ctx, TrainingRun& run, ValueFunction& vf, const PackedRollout& packed,
                         const ScoredRollout& sr, uint64_t seed, int64_t step) const {
    std::vector<NamedParameter> all_params = ctx.params;
    all_params.insert(all_params.end(), vf.params.begin(), vf.params.end());
    const int64_t N = sr.mask.size(0);
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed * 7919ull + static_cast<uint64_t>(step));
    UpdateStats st;
    bool stop = false;
    for (int64_t epoch = 0; epoch < epochs_ && !stop; ++epoch) {
      auto perm = at::randperm(N, gen, at::TensorOptions().dtype(at::kLong));
      for (int64_t mb = 0; mb < minibatches_ && !stop; ++mb) {
        auto idx = perm.narrow(0, mb * N / minibatches_, (mb + 1) * N / minibatches_ - mb * N / minibatches_);
        auto idx_d = idx.to(ctx.device);
        PackedRollout sub = select_rows(packed, idx);
        auto m = sr.mask.index_select(0, idx_d);
        PolicyOutput out = policy_forward(*ctx.model, sub, rl_.temperature);
        auto old_lp = sr.old_logp.index_select(0, idx_d);
        ClippedLoss cl = clipped_policy_loss(out.logp, old_lp, sr.advantages.index_select(0, idx_d), rl_.clip_eps);
        auto policy_loss = masked_mean(cl.loss, m);
        // Clipped value loss: the new estimate may move at most value_clip from the old one.
        auto v = vf.values(*ctx.model, sub, out.hidden);
        auto v_old = sr.old_values.index_select(0, idx_d), ret = sr.returns.index_select(0, idx_d);
        auto v_clipped = v_old + (v - v_old).clamp(-value_clip_, value_clip_);
        auto value_loss = 0.5 * masked_mean(at::max((v - ret).pow(2), (v_clipped - ret).pow(2)), m);
        auto entropy = masked_mean(out.entropy, m);
        // Data-parallel: the value function's gradients are averaged beside the policy's.
        if (vf.grad_sync) vf.grad_sync->arm();
        run.backward(policy_loss + value_coef_ * value_loss - entropy_coef_ * entropy);
        if (vf.grad_sync) vf.grad_sync->finish();
        st.grad_norm = clip_grad_norm(all_params, rl_.grad_clip).item<double>();
        ctx.optimizer->step();
        vf.optimizer->step();
        ctx.optimizer->zero_grad(ctx.params);
        vf.optimizer->zero_grad(vf.params);
        st.policy_loss += policy_loss.item<double>(), st.value_loss += value_loss.item<double>();
        st.clip_frac += masked_mean(cl.clipped.to(at::kFloat), m).item<double>();
        st.entropy += entropy.item<double>();
        ++st.updates;
        // How far the policy moved from the sampling one (the k3 estimate on this minibatch).
        // (averaged over ranks, so that every rank stops after the same update)
        st.approx_kl = run.mean_over_ranks(masked_mean(k3_kl(out.logp.detach(), old_lp), m).item<double>());
        stop = target_kl_ > 0 && st.approx_kl > 1.5 * target_kl_;
      }
    }
    return st;
  }

  const RLSettings rl_;
  const bool separate_value_model_;
  const double gamma_, lambda_;
  const int64_t epochs_, minibatches_;
  const double value_coef_, value_clip_, entropy_coef_, target_kl_;
};

void register_ppo(Registry& r) {
  Schema s = rl_common_schema();
  s.push_back({"value_model", ParamType::String, "trunk", "value head on the policy's trunk, or on a separate copy of the starting model", {"trunk", "separate"}});
  s.push_back({"gamma", ParamType::Float, "1.0", "discount of GAE", {}, 0, 1});
  s.push_back({"lambda", ParamType::Float, "0.95", "GAE's lambda (bias / variance of the advantages)", {}, 0, 1});
  s.push_back({"ppo_epochs", ParamType::Int, "2", "passes over each generated batch", {}, 1});
  s.push_back({"minibatches", ParamType::Int, "2", "minibatches per pass (one optimizer step each)", {}, 1});
  s.push_back({"value_coef", ParamType::Float, "0.5", "weight of the value loss", {}, 0});
  s.push_back({"value_clip", ParamType::Float, "0.2", "how far a value estimate may move from the old one in the clipped value loss", {}, 0});
  s.push_back({"entropy_coef", ParamType::Float, "0.0", "weight of the entropy bonus"});
  s.push_back({"target_kl", ParamType::Float, "0.0", "stop a step's passes once the approximate KL to the sampling policy exceeds 1.5 x this (0 = never)", {}, 0});
  r.add_trainer("ppo", "PPO with a value head, GAE and a per-token KL penalty to a reference, on the experiment's task", s,
                [](const Params& t) { return std::make_shared<PPOTrainer>(t); });
}

}  // namespace
}  // namespace linearnexus

LINEARNEXUS_PLUGIN("ppo", "1.0.0", "PPO: clipped policy and value losses, GAE, KL to a reference", linearnexus::register_ppo)
