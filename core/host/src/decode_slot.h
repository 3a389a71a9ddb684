#pragma once
// The decode engine's static buffers and its one-token step (generator.cpp), shared by the two ways
// of driving it: DecodeGenerator's calls (a batch from prefill to its last token) and DecodeStream's
// continuous batching (rows join and leave between steps). Internal to the host library.
#include <ATen/ATen.h>

#include <memory>
#include <vector>

#include "cuda_graph.h"
#include "linearnexus/host/generator.h"

namespace linearnexus {

// The static buffers of one (batch, cache length, sampling) key, and the step captured on them.
struct DecodeGenerator::Slot {
  int64_t N = 0, L = 0;
  // A DecodeStream's slot: a sampler counter and a seed per row (each row counts its own draws from
  // when it joined), and the history indexed by cache column rather than by the counter.
  bool stream = false;
  ModelState state;                  // every layer's cache, N rows and L columns
  at::Tensor key_padding;            // [N, L] bool
  at::Tensor tok;                    // [N, 1] int64: the token the next step consumes
  at::Tensor pos;                    // [N, 1] int64: its position (counted from the row's first real token)
  at::Tensor column;                 // [1] int64: its cache column
  at::Tensor counter;                // [1] int64 (a stream's: [N]): tokens drawn so far, the sampler's counter
  at::Tensor seed;                   // [1] int64, or [N]: a seed per row (generate_seeded, streams)
  at::Tensor done;                   // [N] bool: the row drew EOS or the host stopped it
  at::Tensor tokens, logprobs;       // [N, L]: what each draw gave, at the counter's (a stream's: the column's) index
  std::unique_ptr<StepGraph> graph;  // the captured step, if any
};

// The log-probs [N] of the drawn tokens `next` [N] under the sampling temperature (T = 1 when greedy).
at::Tensor drawn_logprobs(const at::Tensor& logits, const at::Tensor& next, const SamplingParams& p);

// Records one draw from logits [N, V] in the slot's history and makes it the next step's input.
void draw(DecodeGenerator::Slot& s, const at::Tensor& logits, const SamplingParams& p);
// The same for a draw already made: tokens `next` [N] with their log-probs [N] (the greedy head's).
void record_draw(DecodeGenerator::Slot& s, at::Tensor next, const at::Tensor& logp, const SamplingParams& p);

// The static step: one token per row on the slot's fixed buffers (what a CUDA graph captures).
void static_step(InferenceModel& w, DecodeGenerator::Slot& s, const SamplingParams& p);

// A 64-bit seed as the sampler's 32-bit one.
int64_t fold_seed(uint64_t seed);

// Whether the tokens `s` end with `tail` (a stop sequence; never an empty one).
bool ends_with_tokens(const std::vector<int64_t>& s, const std::vector<int64_t>& tail);

// Prompts left-padded so that each ends at cache column `end` (>= P, the longest prompt): what a prefill
// feeds the model. Positions count from each prompt's first real token, so a padded row computes what
// it would alone; padding is never attended to.
struct LeftPadded {
  at::Tensor ids;        // [n, P] int64 on the CPU: prompt i in columns [P - len_i, P)
  at::Tensor real;       // [n, L] bool on the CPU: prompt i's cache columns [end - len_i, end), and [end, L)
  at::Tensor positions;  // [n, P] int64 on `device`, undefined when no column before `end` is padding
  std::vector<int64_t> lens;
  int64_t P = 0;
  bool padded = false;  // some column before `end` is padding (then `real` is the prefill's key padding)
};
LeftPadded left_pad(const std::vector<std::vector<int64_t>>& prompts, int64_t end, int64_t L, const at::Device& device);

}  // namespace linearnexus
