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
#include <linearnexus/error.h>
#include <linearnexus/plugin.h>
#include <linearnexus/trainer.h>

#include <ATen/CPUGeneratorImpl.h>

#include "rl.h"

namespace linearnexus {
namespace {

// The rows `idx` of a packed rollout (a minibatch).
PackedRollout select_rows(const PackedRollout& r, const at::Tensor& idx) {
  return {r.input.index_select(0, idx), r.target.index_select(0, idx), r.gather.index_select(0, idx),
          r.mask.index_select(0, idx)};
}

// The critic: a scalar head on a trunk's final hidden state. [N, Lg, C] -> [N, Lg]. Its tensors
// ("head.*", "trunk.*") are the run's trainable group "value" (checkpointed as extra.value.*), its
// parameters named value_head.* / value_trunk.* (the keys of its optimizer's state).
struct ValueFunction : torch::nn::Module {
  std::shared_ptr<LMModel> trunk;  // null: the policy's own trunk
  torch::nn::Linear head{nullptr};
  std::vector<NamedParameter> params;  // what the value optimizer updates
  std::shared_ptr<Optimizer> optimizer;

  at::Tensor values(const PackedRollout& r, const at::Tensor& policy_hidden) {
    at::Tensor h = policy_hidden;
    if (trunk) h = to_completion_layout(trunk->forward_hidden(r.input.to(h.device())), r);
    return head(h).squeeze(-1);
  }
};

// Builds the critic and adds it to the run: a zero-initialised head (no value is better than a
// random one), on the policy's trunk or on a trainable copy of the reference model (value_model:
// separate), with its own optimizer of the experiment's kind. resume() then restores it.
std::shared_ptr<ValueFunction> make_value_function(TrainingRun& run, const std::string& reference, bool separate) {
  auto vf = std::make_shared<ValueFunction>();
  const int64_t C = run.model().config().dims.hidden_size;
  vf->head = vf->register_module("head", torch::nn::Linear(C, 1));
  {
    torch::NoGradGuard g;
    vf->head->weight.zero_();
    vf->head->bias.zero_();
  }
  vf->head->to(run.device());
  for (const auto& kv : vf->head->named_parameters()) vf->params.push_back({"value_head." + kv.key(), kv.value(), {}});
  if (separate) {
    vf->trunk = vf->register_module("trunk", run.load_model(reference, /*trainable=*/true));
    for (auto& np : vf->trunk->optimizer_parameters()) {
      np.name = "value_trunk." + np.name;
      vf->params.push_back(np);
    }
  }
  vf->optimizer = run.make_optimizer(vf->params);
  run.add_trainable("value", *vf, vf->params, vf->optimizer);
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

  void check_start(const TrainerStart& start) const override { check_rl_start(start, rl_, "ppo"); }

  void run(TrainingRun& run) override {
    LMModel& policy = run.model();
    auto task = run.task();
    auto ref = load_reference_model(run, rl_, "ppo");
    auto vf = make_value_function(run, rl_.reference(run), separate_value_model_);
    const int64_t start = run.resume();
    auto generator = run.make_generator(policy);
    log_initial_accuracy(run, start, *generator, *task, rl_.max_new_tokens);

    policy.train();
    for (int64_t step = start; step < run.last_step(); ++step) {
      run.begin_step(step);
      Rollout ro =
          collect_rollout(*generator, *task, run.tokenizer(), rank_examples(run, *task, step, rl_.prompts_per_step),
                          rl_.group_size, rl_.sampling(run.seed(), step, run.rank()));
      ScoredRollout sr = score(run, *ref, *vf, ro);
      UpdateStats st = ppo_update(run, *vf, ro.packed, sr, step);
      const double n = static_cast<double>(std::max<int64_t>(st.updates, 1));
      run.end_step(
          step,
          [&] {
            std::map<std::string, double> m = rollout_metrics(ro);
            m["policy_loss"] = st.policy_loss / n;
            m["value_loss"] = st.value_loss / n;
            m["grad_norm"] = st.grad_norm;
            m["kl"] = masked_mean(k3_kl(sr.old_logp, sr.ref_logp), sr.mask).item<double>();
            m["approx_kl"] = st.approx_kl;
            m["ppo_updates"] = static_cast<double>(st.updates);
            m["clip_frac"] = st.clip_frac / n;
            m["entropy"] = st.entropy / n;
            if (run.is_eval_step(step))
              m["eval_accuracy"] = task_accuracy(*generator, *task, run.tokenizer(), rl_.max_new_tokens);
            return m;
          },
          ro.packed.input.numel());
    }
  }

 private:
  // The sampling policy's log-probs and values, the reference's log-probs, and from them the
  // per-token rewards (the KL penalty everywhere, the task's score on the last real token), GAE
  // advantages (whitened) and value targets.
  ScoredRollout score(TrainingRun& run, LMModel& ref, ValueFunction& vf, const Rollout& ro) const {
    torch::NoGradGuard g;
    ScoredRollout s;
    s.mask = run.to_device(ro.packed.mask);  // [N, Lg]
    PolicyOutput old = policy_forward(run.model(), ro.packed, rl_.temperature);
    s.old_logp = old.logp;
    s.old_values = vf.values(ro.packed, old.hidden) * s.mask;
    s.ref_logp = policy_forward(ref, ro.packed, rl_.temperature).logp;
    auto rewards = -rl_.beta * (s.old_logp - s.ref_logp) * s.mask;
    auto last = (s.mask.to(at::kLong).sum(1) - 1).clamp_min(0).unsqueeze(1);  // [N, 1]
    rewards = rewards.scatter_add(1, last, run.to_device(ro.rewards).unsqueeze(1) * s.mask.any(1, true).to(at::kFloat));
    GAE gae = compute_gae(rewards, s.old_values, s.mask, gamma_, lambda_);
    s.advantages = masked_whiten(gae.advantages, s.mask);
    s.returns = gae.returns;
    return s;
  }

  // ppo_epochs passes over the rollout in `minibatches` shuffled minibatches (seeded per step), one
  // policy + value update each; stops early once the approximate KL passes 1.5 x target_kl.
  UpdateStats ppo_update(TrainingRun& run, ValueFunction& vf, const PackedRollout& packed, const ScoredRollout& sr,
                         int64_t step) const {
    const int64_t N = sr.mask.size(0);
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(run.seed() * 7919ull + static_cast<uint64_t>(step));
    UpdateStats st;
    bool stop = false;
    for (int64_t epoch = 0; epoch < epochs_ && !stop; ++epoch) {
      auto perm = at::randperm(N, gen, at::TensorOptions().dtype(at::kLong));
      for (int64_t mb = 0; mb < minibatches_ && !stop; ++mb) {
        auto idx = perm.narrow(0, mb * N / minibatches_, (mb + 1) * N / minibatches_ - mb * N / minibatches_);
        auto idx_d = run.to_device(idx);
        PackedRollout sub = select_rows(packed, idx);
        auto m = sr.mask.index_select(0, idx_d);
        PolicyOutput out = policy_forward(run.model(), sub, rl_.temperature);
        auto old_lp = sr.old_logp.index_select(0, idx_d);
        ClippedLoss cl = clipped_policy_loss(out.logp, old_lp, sr.advantages.index_select(0, idx_d), rl_.clip_eps);
        auto policy_loss = masked_mean(cl.loss, m);
        // Clipped value loss: the new estimate may move at most value_clip from the old one.
        auto v = vf.values(sub, out.hidden);
        auto v_old = sr.old_values.index_select(0, idx_d), ret = sr.returns.index_select(0, idx_d);
        auto v_clipped = v_old + (v - v_old).clamp(-value_clip_, value_clip_);
        auto value_loss = 0.5 * masked_mean(at::max((v - ret).pow(2), (v_clipped - ret).pow(2)), m);
        auto entropy = masked_mean(out.entropy, m);
        // One update of the policy and the value function together (the run steps both groups).
        run.backward(policy_loss + value_coef_ * value_loss - entropy_coef_ * entropy);
        st.grad_norm = run.optimizer_step(sub.input.to(run.device())).item<double>();
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
  s.push_back({"value_model",
               ParamType::String,
               "trunk",
               "value head on the policy's trunk, or on a separate copy of the starting model",
               {"trunk", "separate"}});
  s.push_back({"gamma", ParamType::Float, "1.0", "discount of GAE", {}, 0, 1});
  s.push_back({"lambda", ParamType::Float, "0.95", "GAE's lambda (bias / variance of the advantages)", {}, 0, 1});
  s.push_back({"ppo_epochs", ParamType::Int, "2", "passes over each generated batch", {}, 1});
  s.push_back({"minibatches", ParamType::Int, "2", "minibatches per pass (one optimizer step each)", {}, 1});
  s.push_back({"value_coef", ParamType::Float, "0.5", "weight of the value loss", {}, 0});
  s.push_back({"value_clip",
               ParamType::Float,
               "0.2",
               "how far a value estimate may move from the old one in the clipped value loss",
               {},
               0});
  s.push_back({"entropy_coef", ParamType::Float, "0.0", "weight of the entropy bonus"});
  s.push_back({"target_kl",
               ParamType::Float,
               "0.0",
               "stop a step's passes once the approximate KL to the sampling policy exceeds 1.5 x this (0 = never)",
               {},
               0});
  r.add_trainer("ppo", "PPO with a value head, GAE and a per-token KL penalty to a reference, on the experiment's task",
                s, [](const Params& t) { return std::make_shared<PPOTrainer>(t); });
}

}  // namespace
}  // namespace linearnexus

LINEARNEXUS_PLUGIN("ppo", "1.0.0", "PPO: clipped policy and value losses, GAE, KL to a reference",
                   linearnexus::register_ppo)
