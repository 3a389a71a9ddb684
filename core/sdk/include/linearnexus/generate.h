#pragma once
// Sampling from a model with its state cache: temperature, top-k, top-p, streaming, and batches of
// prompts of different lengths (left padding), each sampled num_return_sequences times (RL groups).
#include <ATen/ATen.h>

#include <functional>
#include <string>
#include <vector>

namespace linearnexus {

struct SamplingParams {
  double temperature = 1.0;  // 0 = greedy
  int64_t top_k = 0;         // 0 = off
  double top_p = 1.0;        // 1 = off
  int64_t max_new_tokens = 100;
  uint64_t seed = 0;
  int64_t eos_id = -1;  // stop when sampled (-1 = never)
  // A row also stops once its new tokens end with one of these token sequences (a stop string
  // encoded by the tokenizer). The stop tokens are part of the completion.
  std::vector<std::vector<int64_t>> stop_sequences;
};

// What Generator::generate returns. Row r = prompt r / num_return_sequences, sample r % num_return_sequences.
struct GeneratedBatch {
  at::Tensor tokens;    // [N, L] int64 new tokens; 0 after a row stopped (L = the longest row)
  at::Tensor logprobs;  // [N, L] float log-prob of each drawn token under the sampling temperature
                        // (log_softmax(logits / T), T = 1 when greedy), before top-k/top-p
  at::Tensor mask;      // [N, L] bool, true for the row's real new tokens (its stop token included)
  std::vector<std::vector<int64_t>> completions;  // per row, the real new tokens
  std::vector<bool> stopped;                      // per row: ended on EOS or a stop sequence
};

// Called with (row, token) as each token is drawn; return false to stop that row.
using TokenCallback = std::function<bool(int64_t row, int64_t token)>;

// A model's decoder: prompts in, sampled tokens out. The host makes one for a model (the training run's
// TrainingRun::make_generator; the runner's `sample`); its caller owns it and reuses it across calls,
// so what it builds once (inference weights, static caches, captured CUDA graphs) is kept. It never
// changes the model it decodes.
//
// generate: many prompts at once. Prompts are left-padded to the longest one, with a key-padding mask
// and positions counted from each prompt's first real token, so every row computes what it would
// alone (same tokens under greedy decoding). The unique prompts are prefilled once and their states
// repeated num_return_sequences times. Decoding stops when every row has hit EOS, a stop sequence,
// its callback's false or max_new_tokens. No gradients; the same seed draws the same tokens. The
// callback sees the tokens a few steps late on a GPU (the host reads them every few steps), in order.
class Generator {
 public:
  virtual ~Generator() = default;
  virtual GeneratedBatch generate(const std::vector<std::vector<int64_t>>& prompts, const SamplingParams& params,
                                  int64_t num_return_sequences = 1, const TokenCallback& on_token = nullptr) = 0;
  // One prompt: generate() with one row. Returns the new tokens.
  std::vector<int64_t> generate(const std::vector<int64_t>& prompt, const SamplingParams& params,
                                const std::function<bool(int64_t)>& on_token = nullptr) {
    TokenCallback cb;
    if (on_token) cb = [&](int64_t, int64_t t) { return on_token(t); };
    return generate(std::vector<std::vector<int64_t>>{prompt}, params, 1, cb).completions.front();
  }
};

}  // namespace linearnexus
