// Per-token log-probabilities of a sequence under a model (see scoring.h).
#include "linearnexus/host/scoring.h"

#include <torch/torch.h>

#include <cmath>

#include "linearnexus/error.h"
#include "linearnexus/model.h"

namespace linearnexus {

double TokenScores::mean_nll() const {
  double sum = 0;
  for (double lp : logprobs) sum -= lp;
  return logprobs.empty() ? 0.0 : sum / static_cast<double>(logprobs.size());
}

double TokenScores::perplexity() const { return std::exp(mean_nll()); }

TokenScores score_tokens(LMModel& model, const std::vector<int64_t>& ids, int64_t window,
                         const ScoreProgress& progress) {
  const int64_t n = static_cast<int64_t>(ids.size()), V = model.config().dims.vocab_size;
  if (n < 2)
    throw Error("eval: needs at least 2 tokens (the first has nothing to be predicted from), got " + std::to_string(n));
  for (int64_t id : ids)
    if (id < 0 || id >= V)
      throw Error("eval: token id " + std::to_string(id) + " is outside the model's vocabulary (0.." +
                  std::to_string(V - 1) + ")");
  if (window <= 0) window = model.config().dims.max_seq_len;
  torch::NoGradGuard no_grad;
  const bool was_training = model.is_training();
  model.eval();
  const auto device = model.parameters().front().device();
  const at::Tensor all = at::tensor(ids, at::kLong);
  constexpr int64_t kLogitRows = 256;  // positions per logits slice: [256, V] fp32 at a time
  TokenScores out;
  for (int64_t pos = 0; pos < n - 1; pos += window) {
    const int64_t len = std::min(window, n - 1 - pos);
    const auto x = all.narrow(0, pos, len).unsqueeze(0).to(device);  // [1, len]
    const auto y = all.narrow(0, pos + 1, len).to(device);           // [len]
    const auto h = model.forward_hidden(x).squeeze(0);               // [len, C]
    for (int64_t r = 0; r < len; r += kLogitRows) {
      const int64_t m = std::min(kLogitRows, len - r);
      const auto logits = model.lm_logits(h.narrow(0, r, m).unsqueeze(0)).squeeze(0).to(at::kFloat);  // [m, V]
      const auto lp =
          at::log_softmax(logits, -1).gather(1, y.narrow(0, r, m).unsqueeze(1)).squeeze(1).to(at::kDouble).cpu();
      const double* p = lp.data_ptr<double>();
      out.logprobs.insert(out.logprobs.end(), p, p + m);
    }
    if (progress) progress(pos + len, n - 1);
  }
  if (was_training) model.train();
  return out;
}

}  // namespace linearnexus
