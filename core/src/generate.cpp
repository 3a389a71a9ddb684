// Sampling and generation: one batched, left-padded decoding loop that every caller uses (the
// `sample` command, the public single-prompt generate(), and the RL trainers' rollouts).
#include "linearnexus/generate.h"

#include <ATen/CPUGeneratorImpl.h>

#include <limits>

#include "linearnexus/error.h"
#include "linearnexus/log.h"
#include "linearnexus/model.h"

namespace linearnexus {

at::Tensor sample_next(const at::Tensor& logits_in, const SamplingParams& p, at::Generator& gen) {
  // logits: [B, V] -> [B]
  auto logits = logits_in.to(at::kFloat).to(at::kCPU);
  if (p.temperature <= 0) return logits.argmax(-1);
  logits = logits / p.temperature;
  const double neg_inf = -std::numeric_limits<double>::infinity();
  if (p.top_k > 0 && p.top_k < logits.size(-1)) {
    auto kth = std::get<0>(logits.topk(p.top_k, -1)).narrow(-1, p.top_k - 1, 1);  // [B, 1]
    logits = logits.masked_fill(logits < kth, neg_inf);
  }
  if (p.top_p < 1.0) {
    auto sorted = logits.sort(-1, /*descending=*/true);
    auto sorted_logits = std::get<0>(sorted), order = std::get<1>(sorted);
    auto probs = sorted_logits.softmax(-1);
    // Drop a token when the mass before it already reaches top_p (the most likely one always stays).
    auto drop = (probs.cumsum(-1) - probs) >= p.top_p;
    drop.select(-1, 0).fill_(false);  // top_p 0: the most likely token alone
    sorted_logits = sorted_logits.masked_fill(drop, neg_inf);
    logits = at::empty_like(logits).scatter_(-1, order, sorted_logits);
  }
  return at::multinomial(logits.softmax(-1), 1, false, gen).squeeze(-1);
}

namespace {
bool ends_with(const std::vector<int64_t>& s, const std::vector<int64_t>& tail) {
  return !tail.empty() && s.size() >= tail.size() && std::equal(tail.rbegin(), tail.rend(), s.rbegin());
}
}  // namespace

GeneratedBatch generate_batch(LMModel& model, const std::vector<std::vector<int64_t>>& prompts_in,
                              const SamplingParams& p, int64_t group, const TokenCallback& on_token) {
  if (prompts_in.empty()) throw Error("generate: no prompts");
  if (group < 1) throw Error("generate: num_return_sequences must be at least 1 (got " + std::to_string(group) + ")");
  torch::NoGradGuard no_grad;
  const bool was_training = model.is_training();
  model.eval();
  const int64_t max_len = model.config().dims.max_seq_len;
  std::vector<std::vector<int64_t>> prompts = prompts_in;
  int64_t P = 0;  // the longest prompt
  for (auto& prompt : prompts) {
    if (prompt.empty()) throw Error("generate: a prompt is empty (no token of it is in the vocabulary?)");
    if (static_cast<int64_t>(prompt.size()) >= max_len) {
      log_warn("prompt of " + std::to_string(prompt.size()) + " tokens keeps only its last " +
               std::to_string(max_len / 2) + " (model.max_seq_len = " + std::to_string(max_len) + ")");
      prompt.erase(prompt.begin(), prompt.end() - max_len / 2);
    }
    P = std::max<int64_t>(P, static_cast<int64_t>(prompt.size()));
  }
  const int64_t budget = std::min<int64_t>(p.max_new_tokens, max_len - P);
  if (budget < p.max_new_tokens)
    log_warn("generation stops after " + std::to_string(budget) + " tokens at model.max_seq_len");
  const int64_t n_prompts = static_cast<int64_t>(prompts.size()), N = n_prompts * group;
  auto device = model.parameters().front().device();
  auto long_opts = at::TensorOptions().dtype(at::kLong);

  // Left-pad: prompt i sits at columns [P - len_i, P). Real tokens count positions from 0, so a
  // padded row sees exactly the positions it would alone; padding is never attended to.
  auto idx = at::zeros({n_prompts, P}, long_opts);
  auto real = at::zeros({n_prompts, P}, at::kBool);
  std::vector<int64_t> prompt_len(n_prompts);
  bool padded = false;
  for (int64_t i = 0; i < n_prompts; ++i) {
    const int64_t len = static_cast<int64_t>(prompts[i].size());
    prompt_len[i] = len;
    padded |= len < P;
    idx[i].narrow(0, P - len, len).copy_(at::tensor(prompts[i], long_opts));
    real[i].narrow(0, P - len, len).fill_(true);
  }
  ModelState state = model.init_state(n_prompts, P + budget);
  at::Tensor positions;
  if (padded) {
    state.key_padding = at::cat({real, at::ones({n_prompts, budget}, at::kBool)}, 1).to(device);  // [n, P + budget]
    positions = (real.to(at::kLong).cumsum(1) - 1).clamp_min(0).to(device);                       // [n, P]
  }
  auto logits = model.forward(idx.to(device), &state, Mode::Prefill, positions).select(1, -1);  // [n, V]
  if (group > 1) {
    // Each prompt's state and last logits, repeated for its group: row r comes from prompt r / group.
    auto rows = at::arange(n_prompts, long_opts).repeat_interleave(group).to(device);
    state = state.index_select(rows);
    logits = logits.index_select(0, rows);
  }
  auto next_pos = at::tensor(prompt_len, long_opts).repeat_interleave(group).unsqueeze(1).to(device);  // [N, 1]

  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(p.seed);
  GeneratedBatch out;
  out.completions.assign(N, {});
  out.stopped.assign(N, false);
  std::vector<bool> done(N, false);
  std::vector<at::Tensor> token_cols, logprob_cols, mask_cols;
  const double temp = p.temperature > 0 ? p.temperature : 1.0;
  for (int64_t step = 0; step < budget; ++step) {
    auto tok = sample_next(logits, p, gen);                                                   // [N] cpu
    auto logp = at::log_softmax(logits.to(at::kFloat).to(at::kCPU) / temp, -1).gather(1, tok.unsqueeze(1)).squeeze(1);
    auto live = at::zeros({N}, at::kBool);
    auto tok_acc = tok.accessor<int64_t, 1>();
    int64_t n_live = 0;
    for (int64_t r = 0; r < N; ++r) {
      if (done[r]) {
        tok_acc[r] = 0;
        continue;
      }
      live[r] = true;
      const int64_t t = tok_acc[r];
      out.completions[r].push_back(t);
      bool stop = t == p.eos_id;
      for (const auto& s : p.stop_sequences) stop = stop || ends_with(out.completions[r], s);
      out.stopped[r] = stop;
      if (on_token && !on_token(r, t)) stop = true;
      done[r] = stop;
      n_live += !stop;
    }
    token_cols.push_back(tok);
    logprob_cols.push_back(logp.masked_fill(live.logical_not(), 0.0));
    mask_cols.push_back(live);
    if (n_live == 0 || step + 1 == budget) break;
    // Rows that are done keep decoding a padding token: cheaper than compacting the batch, and
    // their outputs are masked out.
    logits = model.forward(tok.unsqueeze(1).to(device), &state, Mode::Decode, padded ? next_pos : at::Tensor())
                 .select(1, -1);
    next_pos = next_pos + 1;
  }
  out.tokens = at::stack(token_cols, 1);
  out.logprobs = at::stack(logprob_cols, 1);
  out.mask = at::stack(mask_cols, 1);
  if (was_training) model.train();
  return out;
}

std::vector<int64_t> generate(LMModel& model, const std::vector<int64_t>& prompt, const SamplingParams& params,
                              const std::function<bool(int64_t)>& on_token) {
  TokenCallback cb;
  if (on_token) cb = [&](int64_t, int64_t t) { return on_token(t); };
  return generate_batch(model, {prompt}, params, 1, cb).completions.front();
}

}  // namespace linearnexus
