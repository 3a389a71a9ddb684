#pragma once
// What the RL trainers (grpo, ppo) share, compiled into both (family-private code, not SDK): rollouts from a task, the per-token log-probs of a
// rollout under a model, and the small pieces of policy-gradient math, each testable on its own.
//
// Layouts. A rollout of N rows (prompts x group) is kept in two layouts:
//   completion layout [N, Lg]: token j of row r's completion at column j, `mask` true for real tokens;
//   packed layout     [N, L]:  prompt + completion from column 0, right-padded, for one causal
//                              forward without any mask (padding after a row never affects it).
// Everything the losses see is in the completion layout, so prompt and padding tokens carry no loss
// by construction.
#include <ATen/ATen.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include <linearnexus/generate.h>
#include <linearnexus/params.h>
#include <linearnexus/task.h>
#include <linearnexus/tokenizer.h>
#include <linearnexus/trainer.h>

namespace linearnexus {

class LMModel;
class TrainingRun;

// ---- policy-gradient math (all [N, T] tensors in the completion layout) ----------------------

// rewards [N], consecutive groups of group_size -> advantages [N]: (r - group mean) / (group std + eps),
// or r - group mean when !scale_by_std. std is the unbiased one (as in DeepSeekMath's GRPO).
at::Tensor group_advantages(const at::Tensor& rewards, int64_t group_size, bool scale_by_std, double eps = 1e-4);
// The k3 estimator of KL(policy || reference) per token: exp(ref - logp) - (ref - logp) - 1 (>= 0,
// 0 where they agree).
at::Tensor k3_kl(const at::Tensor& logp, const at::Tensor& ref_logp);
// PPO's clipped surrogate per token, as a loss: -min(ratio A, clip(ratio, 1-eps, 1+eps) A) with
// ratio = exp(logp - old_logp). `clipped` marks tokens where the clip is active (no gradient flows).
struct ClippedLoss {
  at::Tensor loss;     // [N, T]
  at::Tensor clipped;  // [N, T] bool
};
ClippedLoss clipped_policy_loss(const at::Tensor& logp, const at::Tensor& old_logp, const at::Tensor& advantages,
                                double clip_eps);
// Mean of x over mask (scalar).
at::Tensor masked_mean(const at::Tensor& x, const at::Tensor& mask);
// Loss reduction: "token" = mean over all real tokens of the batch; "sequence" = mean over each
// row's tokens, then over rows (DeepSeekMath's 1/|o_i|).
at::Tensor reduce_loss(const at::Tensor& per_token, const at::Tensor& mask, const std::string& norm);
// (x - mean) / std over the masked entries (PPO's advantage whitening); 0 outside the mask.
at::Tensor masked_whiten(const at::Tensor& x, const at::Tensor& mask, double eps = 1e-8);
// Generalised advantage estimation over each row's real tokens (mask a prefix of each row):
// delta_t = r_t + gamma V_{t+1} - V_t (V past the last token = 0), A_t = delta_t + gamma lambda A_{t+1}.
struct GAE {
  at::Tensor advantages;  // [N, T]
  at::Tensor returns;     // advantages + values: the value targets
};
GAE compute_gae(const at::Tensor& rewards, const at::Tensor& values, const at::Tensor& mask, double gamma,
                double lambda);

// ---- rollouts ---------------------------------------------------------------------------------

// Prompt + completion packed from column 0 (see the layouts above).
struct PackedRollout {
  at::Tensor input;   // [N, L] int64 tokens (0 past a row's end)
  at::Tensor target;  // [N, L] int64 next tokens
  at::Tensor gather;  // [N, Lg] int64: packed column predicting completion token j (prompt_len - 1 + j)
  at::Tensor mask;    // [N, Lg] bool: real completion tokens
};
// prompts: one per prompt (row r uses prompt r / group); completions [N, Lg] with mask [N, Lg].
PackedRollout pack_rollout(const std::vector<std::vector<int64_t>>& prompts, int64_t group,
                           const at::Tensor& completions, const at::Tensor& mask);
// Packed [N, L, ...] -> completion layout [N, Lg, ...].
at::Tensor to_completion_layout(const at::Tensor& packed, const PackedRollout& r);

// One forward of `model` over the packed rollout, read out in the completion layout.
struct PolicyOutput {
  at::Tensor logp;     // [N, Lg] log-prob of each completion token, under logits / temperature
  at::Tensor entropy;  // [N, Lg] entropy of the distribution it was drawn from
  at::Tensor hidden;   // [N, Lg, C] the trunk's final hidden state at the predicting position
};
PolicyOutput policy_forward(LMModel& model, const PackedRollout& r, double temperature);

// A batch of task prompts, sampled group times each, and scored.
struct Rollout {
  std::vector<TaskExample> examples;          // one per prompt
  std::vector<std::vector<int64_t>> prompts;  // their tokens
  GeneratedBatch generated;                   // N = examples * group rows
  PackedRollout packed;
  std::vector<std::string> texts;  // per row, the completion cut at the stop string
  at::Tensor rewards;              // [N] float: the task's
  at::Tensor correct;              // [N] float, 1 = exact match
  // Wall time of the whole rollout: generation, scoring (on the host, from the completions' text:
  // the generation has finished then) and packing.
  double ms = 0;
};
// Generates with `policy` (the trainer's generator of its policy model).
Rollout collect_rollout(Generator& policy, const Task& task, const Tokenizer& tok, std::vector<TaskExample> examples,
                        int64_t group, SamplingParams sampling);
// Exact-match accuracy (0..1) of greedy completions on the task's held-out set.
double task_accuracy(Generator& policy, const Task& task, const Tokenizer& tok, int64_t max_new_tokens);

// The keys every RL trainer takes (each trainer adds its own).
const Schema& rl_common_schema();

// Those keys, parsed once (a trainer's constructor makes one from its Params).
struct RLSettings {
  explicit RLSettings(const Params& trainer);
  int64_t prompts_per_step, group_size, max_new_tokens;
  double temperature, beta, clip_eps;
  std::string ref_checkpoint;  // "" = the checkpoint the run started from (trainer.init_from)
  // The reference checkpoint: ref_checkpoint, else the run's starting one ("" = neither).
  std::string reference(const TrainingRun& run) const;
  // Rollout sampling for step `step` on `rank` (seeded per step and rank, for exact resumes).
  SamplingParams sampling(uint64_t seed, int64_t step, int64_t rank = 0) const;
};

// ---- what an RL trainer asks its run for -------------------------------------------------------

// The frozen reference model: trainer.ref_checkpoint, else the checkpoint the run started from. None
// is an error: RL starts from a trained model.
std::shared_ptr<LMModel> load_reference_model(TrainingRun& run, const RLSettings& rl, const std::string& trainer);
// What grpo and ppo need of the experiment (Trainer::check_start): a task section, and a model to
// start from (trainer.init_from, or trainer.ref_checkpoint as the reference).
void check_rl_start(const TrainerStart& start, const RLSettings& rl, const std::string& trainer);
// The training examples of step `step`: a pure function of (seed, step), so resumes see the same.
std::vector<TaskExample> step_examples(const Task& task, uint64_t seed, int64_t step, int64_t n);
// This rank's n of them: the step draws n x world_size examples and rank r takes the r-th n (one
// process: step_examples itself).
std::vector<TaskExample> rank_examples(const TrainingRun& run, const Task& task, int64_t step, int64_t n);
// The step-0 line of metrics.jsonl of a fresh RL run: the starting model's eval_accuracy.
void log_initial_accuracy(TrainingRun& run, int64_t start, Generator& policy, const Task& task, int64_t max_new_tokens);
// The metrics every RL trainer logs about a step's rollout: reward_mean, reward_std,
// train_accuracy, response_len, rollout_ms.
std::map<std::string, double> rollout_metrics(const Rollout& rollout);

}  // namespace linearnexus
