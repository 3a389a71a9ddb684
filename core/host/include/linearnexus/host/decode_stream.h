#pragma once
// Continuous batching on the decode engine (generator.h): a live batch of `rows` rows over one static
// cache of `cache_len` columns. Waiting prompts join free rows between steps and finished rows free
// theirs, while the step (and its CUDA graph) keeps its shape: nothing is rebuilt. `linearnexus
// serve` and `linearnexus sample --prompts FILE` decode this way.
//
//   admit(requests)  prefills the joining prompts on their own (one small batch), their columns lined
//                    up with the live batch's: each prompt ends at the batch's current column c, so
//                    its tokens sit at columns [c - len, c), the columns before it are padding; the
//                    rows are copied into free rows of the live cache (every state tensor is
//                    batch-first, so this needs nothing from the blocks) and draw their first token
//   advance()        up to `sync_every` steps for every row (free rows decode padding), then the host
//                    reads what the live rows drew: tokens, EOS, stop sequences, budgets
//
// Each row draws what DecodeGenerator::generate_seeded({prompt}, params, {seed}) draws alone: the
// same positions, masks and state, a sampler counter of its own from when it joined, and its own
// seed. A prompt joins a running batch when it fits: len <= c and c + max_new_tokens <= cache_len.
// When no row is live the batch starts again at the longest joining prompt. Admission is in order: a
// request that does not fit yet holds back the ones behind it (no starvation).
#include <cstdint>
#include <memory>
#include <vector>

#include "linearnexus/generate.h"

namespace linearnexus {

class DecodeGenerator;

struct StreamRequest {
  int64_t id = 0;  // the caller's name for the row (echoed in its tokens)
  std::vector<int64_t> prompt;
  uint64_t seed = 0;  // the row's draws: those of a one-row call with this seed
  int64_t max_new_tokens = 16;
  std::vector<std::vector<int64_t>> stop_sequences;  // as SamplingParams's: part of the completion
};

struct StreamToken {
  int64_t id = 0, token = 0;
  double logprob = 0;    // as GeneratedBatch::logprobs
  bool last = false;     // the row ended with this token (EOS, a stop sequence, or its budget)
  bool stopped = false;  // with last: ended on EOS or a stop sequence, not on its budget
};

class DecodeStream {
 public:
  // `params`' temperature, top_k, top_p and eos_id hold for every row (seeds, budgets and stop
  // sequences come per request). cache_len 0: the model's context. The generator (and its model)
  // must outlive the stream.
  DecodeStream(DecodeGenerator& generator, int64_t rows, const SamplingParams& params, int64_t cache_len = 0);
  ~DecodeStream();
  DecodeStream(const DecodeStream&) = delete;
  DecodeStream& operator=(const DecodeStream&) = delete;

  // Admits the longest prefix of `requests` that fits now (see above) and returns its length. An empty
  // prompt, or one that could never fit (longer than the cache, or longer than the model's context
  // less one token), is an Error naming the request.
  int64_t admit(const std::vector<StreamRequest>& requests);
  // Steps, then returns the tokens the live rows drew since the last call, in order per row. Nothing
  // when no row is live.
  std::vector<StreamToken> advance();
  // The row of request `id` ends now (no more tokens from it); unknown ids are ignored.
  void cancel(int64_t id);

  int64_t live_rows() const;
  int64_t rows() const;
  bool idle() const { return live_rows() == 0; }
  const SamplingParams& params() const;
  // Whether the step replays a captured CUDA graph.
  bool graphed() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace linearnexus
