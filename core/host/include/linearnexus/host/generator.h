#pragma once
// The host's Generator (generate.h): `linearnexus sample`, `eval`'s callers, the RL rollouts.
//
//   prompts -> left-pad -> eager prefill into a static cache -> step, step, step ... -> tokens
//
// It is made from a const model and owned by its caller; the model never knows it exists. In parts:
//   weights   an inference replica of the model (InferenceModel: the same blocks, built from the
//             registry, its tensors aliasing the model's; under bf16 on CUDA its Linear weights are
//             bf16 copies and the LM head a padded bf16 copy, refreshed when the model's weights
//             change), so no weight is cast per token and the model is never modified;
//   prefill   prompts left-padded into a static cache: one ModelState per (batch, cache length,
//             sampling settings), the cache length rounded up to a bucket so other prompt lengths
//             reuse it; each unique prompt prefilled once, its state repeated for its group;
//   step      one token for every row: eager (each block's Decode path), static (the same on fixed
//             buffers) or, on CUDA (LibTorch 2.x) when every block is graph-safe
//             (Block::graph_safe_decode), the static step plus sampling captured once per slot as a
//             CUDA graph and replayed; sampling on the device (sample_tokens);
//   host check every `sync_every` steps the host reads the drawn tokens: EOS (also tracked on the
//             device: finished rows decode a masked padding token), stop sequences, callbacks;
//   assembly  the GeneratedBatch from the tokens the host read.
#include <ATen/ATen.h>

#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "linearnexus/generate.h"
#include "linearnexus/model.h"

namespace linearnexus {

class Registry;

// Next tokens [N] (int64) from logits [N, V], drawn by inverse-CDF sampling with the uniform of row
// r = hash(seed, counter, r): seed and counter are [1] int64 tensors on the logits' device, so a
// captured step advances the counter on the device. A seed per row (seed [N]) draws row r with
// hash(seed[r], counter, 0), as row 0 of a call seeded seed[r]. Greedy (temperature 0) takes the argmax.
at::Tensor sample_tokens(const at::Tensor& logits, const SamplingParams& params, const at::Tensor& seed,
                         const at::Tensor& counter);

struct DecodeOptions {
  // The step: "auto" (captured on CUDA when every block is graph-safe, else eager), "eager" (each
  // block's usual Decode path), "static" (the static-decoding path, never captured: for tests).
  std::string step = "auto";
  int64_t sync_every = 0;  // steps between host checks of the tokens (0 = 1 on the CPU, 16 on CUDA)
};

// The weights part: a replica of `source` for decoding (see above). The source must outlive it.
class InferenceModel {
 public:
  InferenceModel(const LMModel& source, const Registry& registry);
  // Re-points the replica at the source's tensors where they moved (a .to(device)) and refreshes the
  // low-precision copies whose source changed since the last call. Call before each use.
  void refresh();
  LMModel& model() { return *replica_; }
  // Logits [R, V] of final hidden states [R, 1, C], through the kept head on CUDA.
  at::Tensor logits(const at::Tensor& hidden);
  // logits(final norm of x) for the last block's output x [R, 1, C] (LMModel::forward_stream): with
  // LINEARNEXUS_DECODE_FUSION=1 and <= 8 rows on CUDA, one kernel (the norm in the head's skinny
  // matmul's prologue, layers.h's norm_linear_fused); else exactly logits(final_norm(x)).
  at::Tensor logits_of_stream(const at::Tensor& x);
  // Greedy decoding's draw from x [R, 1, C] as logits_of_stream's argmax and its log-prob, in one kernel
  // without the logits (layers.h's norm_greedy_head): false where that does not apply.
  bool greedy_of_stream(const at::Tensor& x, at::Tensor* token, at::Tensor* logp);
  at::Device device() const;

 private:
  struct Copy {
    at::Tensor source, copy;  // a Linear weight and its low-precision copy
    int64_t version = -1;
  };
  const LMModel& source_;
  std::shared_ptr<LMModel> replica_;
  std::vector<std::pair<at::Tensor, at::Tensor>> aliases_;  // (source tensor, replica tensor)
  std::vector<Copy> copies_;
  at::Tensor head_;            // [V rounded up to 64, C] in the compute dtype; undefined on the CPU
  at::Tensor head_workspace_;  // the greedy head's (norm_greedy_head), made with head_
  int64_t head_version_ = -1;
  at::Device device_ = at::kCPU;
  at::ScalarType dtype_ = at::kFloat;
  void build();
};

class DecodeGenerator final : public Generator {
 public:
  DecodeGenerator(const LMModel& model, const Registry& registry, DecodeOptions options = {});
  ~DecodeGenerator() override;
  using Generator::generate;
  GeneratedBatch generate(const std::vector<std::vector<int64_t>>& prompts, const SamplingParams& params,
                          int64_t num_return_sequences = 1, const TokenCallback& on_token = nullptr) override;
  // One row per prompt, row i drawn with its own seed row_seeds[i] (params.seed is not used): each
  // row draws what generate({prompts[i]}, params seeded row_seeds[i]) draws alone, so requests with
  // their own seeds share one batch (`linearnexus serve`).
  GeneratedBatch generate_seeded(const std::vector<std::vector<int64_t>>& prompts, const SamplingParams& params,
                                 const std::vector<uint64_t>& row_seeds, const TokenCallback& on_token = nullptr);

  DecodeOptions options;
  // The blocks whose Decode path cannot be captured (empty: the step can be graphed).
  std::vector<std::string> blocks_not_graph_safe() const;
  // Whether the last generate call replayed a captured step (tests, benchmarks).
  bool last_call_graphed() const { return last_graphed_; }
  // Drop the static caches and captured steps (they hold GPU memory).
  void clear();

  struct Slot;  // the static buffers (and captured step) of one (batch, cache length, sampling) key

 private:
  friend class DecodeStream;  // continuous batching (decode_stream.h) on the same weights, slots and step
  struct Call;                // one generate call's prompts, budget and host-side bookkeeping
  InferenceModel weights_;
  std::map<std::tuple<int64_t, int64_t, std::string>, std::unique_ptr<Slot>> slots_;
  bool warned_ = false, last_graphed_ = false, capture_failed_ = false;

  GeneratedBatch run(const std::vector<std::vector<int64_t>>& prompts, const SamplingParams& params, int64_t group,
                     const std::vector<uint64_t>& row_seeds, const TokenCallback& on_token);
  Slot& slot_for(int64_t batch, int64_t cache_len, const SamplingParams& params, bool graph, bool seed_per_row);
  // New static buffers; a stream's (decode_stream.h) has a counter per row and a seed per row.
  std::unique_ptr<Slot> make_slot(int64_t batch, int64_t cache_len, bool seed_per_row, bool stream);
  bool use_graph(bool cuda);
  void capture(Slot& s, const SamplingParams& params, bool* graph);
  void prefill(Slot& s, const Call& call, const SamplingParams& params);
  void step(Slot& s, const SamplingParams& params, const std::string& how, ModelState& eager);
  bool read_tokens(Slot& s, Call& call, const SamplingParams& params, const TokenCallback& on_token);
  GeneratedBatch assemble(const Slot& s, Call& call) const;
};

}  // namespace linearnexus
