#pragma once
// The decoding engine behind generate_batch (so behind `linearnexus sample` and the RL rollouts).
//
//   prompts -> left-pad -> eager prefill into a static cache -> step, step, step ... -> tokens
//
// What makes a step cheap on a GPU:
//   - inference weights made once per call: every Linear of the model decodes on a copy in the
//     compute dtype (bf16) refreshed in place, and the LM head on a copy padded for cuBLAS, where
//     autocast used to cast every weight at every token;
//   - static caches: one ModelState per (batch, cache length) kept between calls, the cache length
//     rounded up to a bucket so that calls with other prompt lengths reuse it;
//   - sampling on the device (sample_tokens: temperature, top-k, top-p, seeded by a counter-based
//     hash, so the same seed draws the same tokens on any device and inside a graph);
//   - the token ids stay on the device; the host copies them every `sync_every` steps to check EOS,
//     stop sequences and the callback (EOS is also tracked on the device: finished rows decode a
//     padding token and are masked out);
//   - on CUDA (LibTorch 2.x) the one-token step of the whole model plus sampling is captured as a
//     CUDA graph per (batch, cache length, sampling settings) and replayed. That needs every block
//     to opt in (Block::graph_safe_decode); otherwise the step runs eagerly and one log line names
//     the blocks that could not be captured.
// On the CPU the step is the eager one (each block's usual Decode path), unless a test forces the
// static path to check it against the eager one.
#include <ATen/ATen.h>

#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "linearnexus/generate.h"

namespace linearnexus {

class LMModel;
struct ModelState;

// Next tokens [N] (int64) from logits [N, V], drawn by inverse-CDF sampling with the uniform of row
// r = hash(seed, counter, r): seed and counter are [1] int64 tensors on the logits' device, so a
// captured step advances the counter on the device. Greedy (temperature 0) takes the argmax.
at::Tensor sample_tokens(const at::Tensor& logits, const SamplingParams& params, const at::Tensor& seed,
                         const at::Tensor& counter);

struct DecodeOptions {
  // The step: "auto" (captured on CUDA when every block is graph-safe, else eager), "eager" (each
  // block's usual Decode path), "static" (the static-decoding path, never captured: for tests).
  std::string step = "auto";
  int64_t sync_every = 0;  // steps between host checks of the tokens (0 = 1 on the CPU, 16 on CUDA)
};

class DecodeEngine {
 public:
  explicit DecodeEngine(LMModel& model);
  ~DecodeEngine();
  DecodeEngine(const DecodeEngine&) = delete;
  DecodeEngine& operator=(const DecodeEngine&) = delete;

  // generate_batch's contract (generate.h).
  GeneratedBatch generate(const std::vector<std::vector<int64_t>>& prompts, const SamplingParams& params,
                          int64_t num_return_sequences, const TokenCallback& on_token);

  DecodeOptions options;
  // The blocks whose Decode path cannot be captured (empty: the step can be graphed).
  std::vector<std::string> blocks_not_graph_safe() const;
  // Whether the last generate call replayed a captured step (tests, benchmarks).
  bool last_call_graphed() const { return last_graphed_; }
  // Drop the static caches and captured steps (they hold GPU memory).
  void clear();

  struct Slot;     // the static buffers (and captured step) of one (batch, cache length, sampling) key
  struct Weights;  // the inference weights

 private:
  LMModel& model_;
  std::unique_ptr<Weights> weights_;
  std::map<std::tuple<int64_t, int64_t, std::string>, std::unique_ptr<Slot>> slots_;
  bool warned_ = false, last_graphed_ = false, capture_failed_ = false;
  Slot& slot_for(int64_t batch, int64_t cache_len, const SamplingParams& params, bool graph);
};

}  // namespace linearnexus
