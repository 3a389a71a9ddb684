// Generation: every caller (the `sample` command, the single-prompt generate(), the RL trainers'
// rollouts) goes through the model's decoding engine (decode_engine.h).
#include "linearnexus/generate.h"

#include "linearnexus/decode_engine.h"
#include "linearnexus/model.h"

namespace linearnexus {

GeneratedBatch generate_batch(LMModel& model, const std::vector<std::vector<int64_t>>& prompts,
                              const SamplingParams& params, int64_t group, const TokenCallback& on_token) {
  return model.decoder().generate(prompts, params, group, on_token);
}

std::vector<int64_t> generate(LMModel& model, const std::vector<int64_t>& prompt, const SamplingParams& params,
                              const std::function<bool(int64_t)>& on_token) {
  TokenCallback cb;
  if (on_token) cb = [&](int64_t, int64_t t) { return on_token(t); };
  return generate_batch(model, {prompt}, params, 1, cb).completions.front();
}

}  // namespace linearnexus
