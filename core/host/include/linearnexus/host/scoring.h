#pragma once
// How well a model predicts a token sequence: per-token log-probabilities, mean negative
// log-likelihood and perplexity (`linearnexus eval`; the standard check of an imported checkpoint).
#include <cstdint>
#include <functional>
#include <vector>

namespace linearnexus {

class LMModel;

struct TokenScores {
  // logprobs[k] = log p(ids[k+1] | ids[start of its window .. k]): every token but the first.
  std::vector<double> logprobs;
  double mean_nll() const;    // -mean(logprobs), nats per token
  double perplexity() const;  // exp(mean_nll)
};

// Scores `ids` (at least 2) in windows of `window` tokens (0 = model.max_seq_len): each window
// predicts its tokens from its own start, so the context restarts at window boundaries. Eval mode,
// no gradients, fp32 log-softmax; the logits are formed a few hundred positions at a time.
// `progress` (optional) is called after each window with the tokens scored so far and in all.
using ScoreProgress = std::function<void(int64_t scored, int64_t total)>;
TokenScores score_tokens(LMModel& model, const std::vector<int64_t>& ids, int64_t window = 0,
                         const ScoreProgress& progress = nullptr);

}  // namespace linearnexus
