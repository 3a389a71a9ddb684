// The RL trainers' shared mechanics: policy-gradient math, packing rollouts, scoring, evaluation.
#include "rl.h"

#include <chrono>

#include <linearnexus/error.h>
#include <linearnexus/log.h>
#include <linearnexus/model.h>
#include <linearnexus/trainer.h>

namespace linearnexus {

// ---- policy-gradient math ---------------------------------------------------------------------

at::Tensor group_advantages(const at::Tensor& rewards, int64_t G, bool scale_by_std, double eps) {
  // rewards: [N] -> [N], N = n_prompts * G
  TORCH_CHECK(rewards.dim() == 1 && G > 0 && rewards.size(0) % G == 0, "group_advantages: ", rewards.size(0),
              " rewards do not split into groups of ", G);
  auto r = rewards.to(at::kFloat).view({-1, G});  // [n, G]
  auto centred = r - r.mean(1, true);
  if (scale_by_std) {
    // A group of one has no spread: its std is taken as 0 (advantage 0), not NaN.
    auto std = G > 1 ? r.std(1, /*unbiased=*/true, true) : at::zeros_like(r.narrow(1, 0, 1));
    // A group whose rewards are all equal teaches nothing: advantage 0 (not 0/0 when eps = 0).
    centred = at::where(std > 0, centred / (std + eps), at::zeros_like(centred));
  }
  return centred.reshape({-1});
}

at::Tensor k3_kl(const at::Tensor& logp, const at::Tensor& ref_logp) {
  auto d = ref_logp - logp;
  return d.exp() - d - 1.0;
}

ClippedLoss clipped_policy_loss(const at::Tensor& logp, const at::Tensor& old_logp, const at::Tensor& adv,
                                double clip_eps) {
  // logp, old_logp: [N, T]; adv: [N, T] or [N, 1]
  auto ratio = (logp - old_logp).exp();
  auto unclipped = ratio * adv;
  auto clipped = ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps) * adv;
  // min() picks the clipped term exactly when it is the smaller one: there the gradient is 0.
  return {-at::min(unclipped, clipped), (clipped < unclipped).detach()};
}

at::Tensor masked_mean(const at::Tensor& x, const at::Tensor& mask) {
  auto m = mask.to(x.scalar_type());
  return (x * m).sum() / m.sum().clamp_min(1.0);
}

at::Tensor reduce_loss(const at::Tensor& per_token, const at::Tensor& mask, const std::string& norm) {
  auto m = mask.to(per_token.scalar_type());
  if (norm == "token") return (per_token * m).sum() / m.sum().clamp_min(1.0);
  if (norm == "sequence") return ((per_token * m).sum(1) / m.sum(1).clamp_min(1.0)).mean();
  throw Error("loss normalisation must be token or sequence (got '" + norm + "')");
}

at::Tensor masked_whiten(const at::Tensor& x, const at::Tensor& mask, double eps) {
  auto m = mask.to(x.scalar_type());
  auto mean = masked_mean(x, mask);
  auto var = masked_mean((x - mean).pow(2), mask);
  return (x - mean) * at::rsqrt(var + eps) * m;
}

GAE compute_gae(const at::Tensor& rewards, const at::Tensor& values, const at::Tensor& mask, double gamma,
                double lambda) {
  // rewards, values, mask: [N, T] -> advantages, returns [N, T]
  const int64_t T = rewards.size(1);
  auto m = mask.to(values.scalar_type());
  auto v = values * m;
  std::vector<at::Tensor> adv(T);
  auto next_adv = at::zeros_like(v.select(1, 0));
  auto next_value = at::zeros_like(next_adv);
  for (int64_t t = T - 1; t >= 0; --t) {
    // Past a row's last token the mask is 0: no bootstrap value and no carried advantage.
    auto delta = rewards.select(1, t) + gamma * next_value - v.select(1, t);
    adv[t] = (delta + gamma * lambda * next_adv) * m.select(1, t);
    next_adv = adv[t];
    next_value = v.select(1, t);
  }
  auto advantages = at::stack(adv, 1);
  return {advantages, (advantages + v) * m};
}

// ---- rollouts ---------------------------------------------------------------------------------

PackedRollout pack_rollout(const std::vector<std::vector<int64_t>>& prompts, int64_t group,
                           const at::Tensor& completions, const at::Tensor& mask) {
  const int64_t N = completions.size(0), Lg = completions.size(1);
  auto comp = completions.to(at::kCPU).contiguous();
  auto lens = mask.to(at::kCPU).to(at::kLong).sum(1);  // [N]
  int64_t L = 1;
  for (int64_t r = 0; r < N; ++r)
    L = std::max<int64_t>(L, static_cast<int64_t>(prompts[r / group].size()) + lens[r].item<int64_t>() - 1);
  PackedRollout out;
  out.input = at::zeros({N, L}, at::kLong);
  out.target = at::zeros({N, L}, at::kLong);
  out.gather = at::zeros({N, Lg}, at::kLong);
  out.mask = mask.to(at::kCPU).to(at::kBool);
  for (int64_t r = 0; r < N; ++r) {
    const auto& p = prompts[r / group];
    const int64_t P = static_cast<int64_t>(p.size()), n = lens[r].item<int64_t>();
    auto seq = at::cat({at::tensor(p, at::kLong), comp[r].narrow(0, 0, n)});  // [P + n]
    out.input[r].narrow(0, 0, P + n - 1).copy_(seq.narrow(0, 0, P + n - 1));
    out.target[r].narrow(0, 0, P + n - 1).copy_(seq.narrow(0, 1, P + n - 1));
    if (n > 0) out.gather[r].narrow(0, 0, n).copy_(at::arange(P - 1, P - 1 + n, at::kLong));
  }
  return out;
}

at::Tensor to_completion_layout(const at::Tensor& packed, const PackedRollout& r) {
  // packed: [N, L, ...] -> [N, Lg, ...]
  auto idx = r.gather.to(packed.device());
  for (int64_t d = 2; d < packed.dim(); ++d) idx = idx.unsqueeze(-1);
  std::vector<int64_t> shape(packed.sizes().begin(), packed.sizes().end());
  shape[1] = idx.size(1);
  return packed.gather(1, idx.expand(shape));
}

PolicyOutput policy_forward(LMModel& model, const PackedRollout& r, double temperature) {
  auto device = model.parameters().front().device();
  auto hidden = model.forward_hidden(r.input.to(device));                                        // [N, L, C]
  auto logits = model.lm_logits(hidden).to(at::kFloat) / (temperature > 0 ? temperature : 1.0);  // [N, L, V]
  auto logprobs = at::log_softmax(logits, -1);
  auto token_logp = logprobs.gather(2, r.target.to(device).unsqueeze(-1)).squeeze(-1);  // [N, L]
  auto entropy = -(logprobs.exp() * logprobs).sum(-1);                                  // [N, L]
  PolicyOutput out;
  out.logp = to_completion_layout(token_logp, r);
  out.entropy = to_completion_layout(entropy, r);
  out.hidden = to_completion_layout(hidden, r);
  return out;
}

namespace {
std::string completion_text(const Tokenizer& tok, const std::vector<int64_t>& ids, bool stopped,
                            const std::string& stop) {
  std::string text = tok.decode(ids);
  if (stopped && text.size() >= stop.size() && text.compare(text.size() - stop.size(), stop.size(), stop) == 0)
    text.resize(text.size() - stop.size());
  return text;
}
std::vector<std::vector<int64_t>> stop_sequences(const Task& task, const Tokenizer& tok) {
  const std::string stop = task.stop_string();
  if (stop.empty()) return {};
  return {tok.encode(stop)};
}
}  // namespace

Rollout collect_rollout(Generator& policy, const Task& task, const Tokenizer& tok, std::vector<TaskExample> examples,
                        int64_t group, SamplingParams sampling) {
  const auto t0 = std::chrono::steady_clock::now();
  Rollout out;
  out.examples = std::move(examples);
  // Each prompt follows the stop string, as every example but the first does in the task's SFT text
  // (Task::sft_text): without it the prompt would start a line the model never saw start that way.
  for (const auto& e : out.examples) out.prompts.push_back(tok.encode(task.stop_string() + e.prompt));
  sampling.stop_sequences = stop_sequences(task, tok);
  sampling.eos_id = tok.eos_id();
  out.generated = policy.generate(out.prompts, sampling, group);
  out.packed = pack_rollout(out.prompts, group, out.generated.tokens, out.generated.mask);
  const int64_t N = static_cast<int64_t>(out.generated.completions.size());
  out.rewards = at::zeros({N}, at::kFloat);
  out.correct = at::zeros({N}, at::kFloat);
  for (int64_t r = 0; r < N; ++r) {
    const auto& ex = out.examples[r / group];
    const bool stopped = out.generated.stopped[r];
    out.texts.push_back(completion_text(tok, out.generated.completions[r], stopped, task.stop_string()));
    out.rewards[r] = task.reward(ex, out.texts.back(), stopped);
    out.correct[r] = task.correct(ex, out.texts.back(), stopped) ? 1.0 : 0.0;
  }
  out.ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  return out;
}

double task_accuracy(Generator& policy, const Task& task, const Tokenizer& tok, int64_t max_new_tokens) {
  const auto& set = task.eval_set();
  if (set.empty()) return 0.0;
  SamplingParams greedy;
  greedy.temperature = 0;
  greedy.max_new_tokens = max_new_tokens;
  int64_t right = 0;
  const size_t chunk = 256;
  for (size_t i = 0; i < set.size(); i += chunk) {
    std::vector<TaskExample> part(set.begin() + i, set.begin() + std::min(set.size(), i + chunk));
    Rollout r = collect_rollout(policy, task, tok, part, 1, greedy);
    right += static_cast<int64_t>(r.correct.sum().item<double>());
  }
  return static_cast<double>(right) / static_cast<double>(set.size());
}

const Schema& rl_common_schema() {
  static const Schema s = {
      {"prompts_per_step", ParamType::Int, "16", "task prompts sampled per step", {}, 1},
      {"group_size", ParamType::Int, "8", "completions sampled per prompt (GRPO's G)", {}, 1},
      {"max_new_tokens", ParamType::Int, "8", "longest completion, in tokens", {}, 1},
      {"temperature", ParamType::Float, "1.0", "sampling temperature of the rollouts (log-probs use it too)", {}, 1e-6},
      {"beta", ParamType::Float, "0.04", "weight of the KL to the frozen reference model", {}, 0},
      {"clip_eps", ParamType::Float, "0.2", "PPO clip range of the probability ratio", {}, 0},
      {"ref_checkpoint", ParamType::String, "\"\"",
       "the frozen reference model (\"\" = trainer.init_from, the starting checkpoint)"},
  };
  return s;
}

RLSettings::RLSettings(const Params& t)
    : prompts_per_step(t.get_int("prompts_per_step")),
      group_size(t.get_int("group_size")),
      max_new_tokens(t.get_int("max_new_tokens")),
      temperature(t.get_float("temperature")),
      beta(t.get_float("beta")),
      clip_eps(t.get_float("clip_eps")),
      ref_checkpoint(t.get_string("ref_checkpoint")) {}

SamplingParams RLSettings::sampling(uint64_t seed, int64_t step, int64_t rank) const {
  SamplingParams sp;
  sp.temperature = temperature;
  sp.max_new_tokens = max_new_tokens;
  sp.seed = seed * 1000003ull + static_cast<uint64_t>(step) + (static_cast<uint64_t>(rank) << 40);
  return sp;
}

std::string RLSettings::reference(const TrainingRun& run) const {
  return !ref_checkpoint.empty() ? ref_checkpoint : run.start_checkpoint();
}

namespace {
[[noreturn]] void no_start_model(const std::string& trainer) {
  throw Error("trainer '" + trainer + "' starts from a trained model: set trainer.init_from to its checkpoint (e.g. " +
              "the SFT run folder); it is also the KL reference unless trainer.ref_checkpoint names another");
}
}  // namespace

void check_rl_start(const TrainerStart& start, const RLSettings& rl, const std::string& trainer) {
  if (start.task.empty())
    throw Error("trainer '" + trainer +
                "' needs a task section to draw prompts from and score, e.g. task: {name: arithmetic}");
  if (start.init_from.empty() && rl.ref_checkpoint.empty()) no_start_model(trainer);
}

std::shared_ptr<LMModel> load_reference_model(TrainingRun& run, const RLSettings& rl, const std::string& trainer) {
  const std::string reference = rl.reference(run);
  if (reference.empty()) no_start_model(trainer);
  auto ref = run.load_model(reference, /*trainable=*/false);
  log_info("reference model: " + reference);
  return ref;
}

std::vector<TaskExample> step_examples(const Task& task, uint64_t seed, int64_t step, int64_t n) {
  std::vector<TaskExample> out;
  for (int64_t i = 0; i < n; ++i) out.push_back(task.train_example(seed, step * n + i));
  return out;
}

std::vector<TaskExample> rank_examples(const TrainingRun& run, const Task& task, int64_t step, int64_t n) {
  if (run.world_size() == 1) return step_examples(task, run.seed(), step, n);
  std::vector<TaskExample> out;
  for (int64_t i = 0; i < n; ++i)
    out.push_back(task.train_example(run.seed(), (step * run.world_size() + run.rank()) * n + i));
  return out;
}

void log_initial_accuracy(TrainingRun& run, int64_t start, Generator& policy, const Task& task,
                          int64_t max_new_tokens) {
  if (start == 0)
    run.write_metrics({{"step", 0}, {"eval_accuracy", task_accuracy(policy, task, run.tokenizer(), max_new_tokens)}});
}

std::map<std::string, double> rollout_metrics(const Rollout& ro) {
  return {{"reward_mean", ro.rewards.mean().item<double>()},
          {"reward_std", ro.rewards.std().item<double>()},
          {"train_accuracy", ro.correct.mean().item<double>()},
          {"response_len", ro.packed.mask.to(at::kFloat).sum(1).mean().item<double>()},
          {"rollout_ms", ro.ms}};
}

}  // namespace linearnexus
