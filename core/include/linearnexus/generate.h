#pragma once
// Sampling from an LMModel with its state cache: temperature, top-k, top-p, streaming.
#include <ATen/ATen.h>

#include <functional>
#include <vector>

namespace linearnexus {

class LMModel;

struct SamplingParams {
  double temperature = 1.0;  // 0 = greedy
  int64_t top_k = 0;         // 0 = off
  double top_p = 1.0;        // 1 = off
  int64_t max_new_tokens = 100;
  uint64_t seed = 0;
  int64_t eos_id = -1;       // stop when sampled (-1 = never)
};

// logits [B, V] -> next tokens [B] (int64), drawn with `gen`.
at::Tensor sample_next(const at::Tensor& logits, const SamplingParams& params, at::Generator& gen);

// Prefill the prompt, then decode token by token with the cache; on_token is called with each new
// token as soon as it is drawn (return false to stop). Returns the new tokens.
std::vector<int64_t> generate(LMModel& model, const std::vector<int64_t>& prompt, const SamplingParams& params,
                              const std::function<bool(int64_t)>& on_token = nullptr);

}  // namespace linearnexus
