// The decoding engine (decode_engine.h): prefill, the one-token step (eager, static or replayed from
// a CUDA graph), device-side sampling and the host's every-k-steps check of the tokens.
#include "linearnexus/decode_engine.h"

#include <torch/nn.h>

#include <algorithm>
#include <limits>
#include <sstream>

#include "cuda_graph.h"
#include "linearnexus/compat.h"
#include "linearnexus/error.h"
#include "linearnexus/log.h"
#include "linearnexus/model.h"

namespace linearnexus {

// ---- sampling -----------------------------------------------------------------------------------

namespace {
// A 32-bit integer mix (the "lowbias" hash) on int64 tensors holding values below 2^32: the
// multipliers are below 2^28, so no product overflows.
at::Tensor mix32(at::Tensor x) {
  const int64_t mask = 0xffffffff, mul = 0x45d9f3b;
  for (int round = 0; round < 2; ++round) x = at::bitwise_and(at::bitwise_xor(x, at::__rshift__(x, 16)) * mul, mask);
  return at::bitwise_xor(x, at::__rshift__(x, 16));
}

// Uniforms in (0, 1), one per row: hash(seed, counter, row) with 24 random bits (exact in fp32).
at::Tensor row_uniforms(const at::Tensor& seed, const at::Tensor& counter, int64_t rows) {
  const int64_t offset = 0x632be5ab, mask = 0xffffffff;
  auto salt = mix32(at::bitwise_xor(seed, mix32(counter + offset)));  // [1]
  auto x = mix32(at::bitwise_and(at::arange(rows, seed.options()) + salt, mask));
  return (at::__rshift__(x, 8).to(at::kFloat) + 0.5f) * (1.0f / 16777216.0f);  // [rows]
}
}  // namespace

at::Tensor sample_tokens(const at::Tensor& logits_in, const SamplingParams& p, const at::Tensor& seed,
                         const at::Tensor& counter) {
  // logits: [N, V] -> [N] int64
  auto logits = logits_in.to(at::kFloat);
  if (p.temperature <= 0) return logits.argmax(-1);
  logits = logits / p.temperature;
  const int64_t V = logits.size(-1);
  const double neg_inf = -std::numeric_limits<double>::infinity();
  if (p.top_k > 0 && p.top_k < V) {
    auto kth = std::get<0>(logits.topk(p.top_k, -1)).narrow(-1, p.top_k - 1, 1);  // [N, 1]
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
  // Inverse CDF: the first token whose cumulative probability reaches u * total. A token of
  // probability 0 never is the first (its cumulative equals the one before it), u > 0 excludes
  // token 0 when it has none, and u * total < total keeps the tail of zeros out.
  auto cdf = logits.softmax(-1).cumsum(-1);                                                  // [N, V]
  auto u = row_uniforms(seed, counter, logits.size(0)).unsqueeze(1) * cdf.narrow(-1, V - 1, 1);  // [N, 1]
  return (cdf < u).sum(-1).clamp_max(V - 1);
}

// ---- inference weights ----------------------------------------------------------------------------

// Where autocast would cast a Linear's fp32 weight to bf16 at every token, the engine keeps a bf16
// copy (refreshed when the weight's version changed: an optimizer step, a checkpoint load) and
// points the Linear at it while decoding (not its bias: a block may read that in fp32 outside the
// Linear, as mamba's scan does dt_proj's); and it keeps the LM head's weight padded to 64 rows, in
// the compute dtype, for the head's matmul (LMModel::lm_logits pads it per call).
struct DecodeEngine::Weights {
  struct Copy {
    std::shared_ptr<torch::nn::LinearImpl> linear;
    at::Tensor weight;  // in the compute dtype
    int64_t weight_version = -1;
  };
  std::vector<Copy> linears;
  at::Tensor head;  // [V rounded up to 64, C]; undefined on the CPU
  int64_t head_version = -1;
  at::Device device = at::kCPU;
  at::ScalarType dtype = at::kFloat;
};

namespace {
void refresh(at::Tensor& copy, int64_t& version, const at::Tensor& source) {
  if (!source.defined() || version == static_cast<int64_t>(source._version())) return;
  copy.copy_(source);
  version = static_cast<int64_t>(source._version());
}

// While alive, every Linear of the model computes with the engine's copies.
class LinearSwap {
 public:
  explicit LinearSwap(std::vector<DecodeEngine::Weights::Copy>* copies) : copies_(copies) {
    for (auto& c : *copies_) {
      saved_.push_back(c.linear->weight);
      c.linear->weight = c.weight;
    }
  }
  ~LinearSwap() {
    for (size_t i = 0; i < saved_.size(); ++i) (*copies_)[i].linear->weight = saved_[i];
  }

 private:
  std::vector<DecodeEngine::Weights::Copy>* copies_;
  std::vector<at::Tensor> saved_;
};
}  // namespace

// ---- the static buffers of one batch shape ----------------------------------------------------------

struct DecodeEngine::Slot {
  int64_t N = 0, L = 0;
  ModelState state;      // every layer's cache, N rows and L columns
  at::Tensor key_padding;  // [N, L] bool
  at::Tensor tok;        // [N, 1] int64: the token the next step consumes
  at::Tensor pos;        // [N, 1] int64: its position (counted from the row's first real token)
  at::Tensor column;     // [1] int64: its cache column
  at::Tensor counter;    // [1] int64: tokens drawn so far (the sampler's counter, the history's column)
  at::Tensor seed;       // [1] int64
  at::Tensor done;       // [N] bool: the row drew EOS or the host stopped it
  at::Tensor tokens, logprobs;  // [N, L]: what each draw gave
  std::unique_ptr<StepGraph> graph;   // the captured step, if any
};

DecodeEngine::DecodeEngine(LMModel& model) : model_(model) {}
DecodeEngine::~DecodeEngine() = default;

void DecodeEngine::clear() {
  slots_.clear();
  weights_.reset();
}

std::vector<std::string> DecodeEngine::blocks_not_graph_safe() const {
  std::vector<std::string> out;
  const auto kinds = model_.block_kinds();
  for (size_t i = 0; i < kinds.size(); ++i)
    if (!model_.blocks()[i]->graph_safe_decode() && std::find(out.begin(), out.end(), kinds[i]) == out.end())
      out.push_back(kinds[i]);
  return out;
}

namespace {
std::string sampling_key(const SamplingParams& p, bool graph) {
  std::ostringstream o;
  o << (graph ? "graph" : "eager") << " T" << p.temperature << " k" << p.top_k << " p" << p.top_p << " eos" << p.eos_id;
  return o.str();
}
}  // namespace

DecodeEngine::Slot& DecodeEngine::slot_for(int64_t N, int64_t L, const SamplingParams& p, bool graph) {
  auto key = std::make_tuple(N, L, sampling_key(p, graph));
  auto it = slots_.find(key);
  if (it != slots_.end()) return *it->second;
  if (slots_.size() >= 8) slots_.clear();  // each holds a whole cache: keep a few shapes only
  auto s = std::make_unique<Slot>();
  s->N = N;
  s->L = L;
  s->state = model_.init_state(N, L);
  const auto device = model_.parameters().front().device();
  auto longs = at::TensorOptions().dtype(at::kLong).device(device);
  s->key_padding = at::ones({N, L}, longs.dtype(at::kBool));
  s->tok = at::zeros({N, 1}, longs);
  s->pos = at::zeros({N, 1}, longs);
  s->column = at::zeros({1}, longs);
  s->counter = at::zeros({1}, longs);
  s->seed = at::zeros({1}, longs);
  s->state.key_padding = s->key_padding;
  s->done = at::zeros({N}, longs.dtype(at::kBool));
  s->tokens = at::zeros({N, L}, longs);
  s->logprobs = at::zeros({N, L}, longs.dtype(at::kFloat));
  return *slots_.emplace(key, std::move(s)).first->second;
}

// ---- generation -----------------------------------------------------------------------------------

namespace {
bool ends_with(const std::vector<int64_t>& s, const std::vector<int64_t>& tail) {
  return !tail.empty() && s.size() >= tail.size() && std::equal(tail.rbegin(), tail.rend(), s.rbegin());
}

// Records one draw from logits [N, V] in the slot's history and makes it the next step's input.
void draw(DecodeEngine::Slot& s, const at::Tensor& logits, const SamplingParams& p) {
  auto next = sample_tokens(logits, p, s.seed, s.counter);  // [N]
  const double temp = p.temperature > 0 ? p.temperature : 1.0;
  auto logp = at::log_softmax(logits.to(at::kFloat) / temp, -1).gather(1, next.unsqueeze(1)).squeeze(1);  // [N]
  // Finished rows decode a padding token (cheaper than compacting the batch); the host's mask of
  // live tokens, built as it reads the tokens, zeroes their log-probs at the end.
  next = next.masked_fill(s.done, 0);
  s.tokens.index_copy_(1, s.counter, next.unsqueeze(1));
  s.logprobs.index_copy_(1, s.counter, logp.unsqueeze(1));
  if (p.eos_id >= 0) s.done.logical_or_(next == p.eos_id);
  s.tok.copy_(next.unsqueeze(1));
  s.counter.add_(1);
}

// Copy the state tensors a prefill returned (a recurrent block replaces its own) into the slot's.
void keep_in_place(ModelState& kept, const ModelState& got) {
  for (size_t i = 0; i < kept.layers.size(); ++i)
    for (auto& [key, t] : kept.layers[i].tensors) {
      const auto& g = got.layers[i].tensors.at(key);
      if (!g.is_same(t)) t.copy_(g);
    }
}

int64_t round_up(int64_t n, int64_t to) { return (n + to - 1) / to * to; }
}  // namespace

GeneratedBatch DecodeEngine::generate(const std::vector<std::vector<int64_t>>& prompts_in, const SamplingParams& p,
                                      int64_t group, const TokenCallback& on_token) {
  if (prompts_in.empty()) throw Error("generate: no prompts");
  if (group < 1) throw Error("generate: num_return_sequences must be at least 1 (got " + std::to_string(group) + ")");
  if (options.step != "auto" && options.step != "eager" && options.step != "static")
    throw Error("decode engine: step must be auto, eager or static (got '" + options.step + "')");
  torch::NoGradGuard no_grad;
  const bool was_training = model_.is_training();
  model_.eval();
  struct RestoreMode {
    LMModel& m;
    bool train;
    ~RestoreMode() {
      if (train) m.train();
    }
  } restore{model_, was_training};

  const auto& dims = model_.config().dims;
  const int64_t max_len = dims.max_seq_len, V = dims.vocab_size;
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
  GeneratedBatch out;
  out.completions.assign(N, {});
  out.stopped.assign(N, false);
  if (budget <= 0) {
    out.tokens = at::zeros({N, 0}, at::kLong);
    out.logprobs = at::zeros({N, 0}, at::kFloat);
    out.mask = at::zeros({N, 0}, at::kBool);
    return out;
  }
  const auto device = model_.parameters().front().device();
  const bool cuda = device.is_cuda();
  // The cache length in buckets of 256 columns, so other prompt lengths reuse the slot (and graph).
  const int64_t L = std::min<int64_t>(max_len, round_up(P + budget, 256));

  // The inference weights: bf16 copies of the Linears under bf16 autocast on CUDA, the padded head.
  const bool low_precision = cuda && model_.compute_dtype() != at::kFloat;
  if (!weights_ || weights_->device != device || weights_->dtype != model_.compute_dtype()) {
    slots_.clear();  // their captured steps point at the old copies
    weights_ = std::make_unique<Weights>();
    weights_->device = device;
    weights_->dtype = model_.compute_dtype();
    if (low_precision)
      for (const auto& m : model_.modules(/*include_self=*/false))
        if (auto lin = std::dynamic_pointer_cast<torch::nn::LinearImpl>(m)) {
          Weights::Copy c;
          c.linear = lin;
          c.weight = at::empty_like(lin->weight, lin->weight.options().dtype(weights_->dtype));
          weights_->linears.push_back(std::move(c));
        }
    if (cuda) {
      const auto& w = model_.head_weight();  // [V, C]
      weights_->head = at::zeros({round_up(V, 64), w.size(1)}, w.options().dtype(weights_->dtype));
    }
  }
  for (auto& c : weights_->linears) refresh(c.weight, c.weight_version, c.linear->weight);
  if (weights_->head.defined() && weights_->head_version != static_cast<int64_t>(model_.head_weight()._version())) {
    weights_->head.narrow(0, 0, V).copy_(model_.head_weight());
    weights_->head_version = static_cast<int64_t>(model_.head_weight()._version());
  }
  LinearSwap swap(&weights_->linears);
  auto head = [&](const at::Tensor& h) {  // [R, 1, C] -> [R, V]
    if (!weights_->head.defined()) return model_.lm_logits(h).select(1, 0);
    return at::matmul(h.select(1, 0).to(weights_->head.scalar_type()), weights_->head.t()).narrow(-1, 0, V);
  };

  // The step: graphed where possible.
  const auto unsafe = blocks_not_graph_safe();
  bool graph = cuda && options.step == "auto" && LINEARNEXUS_HAS_CUDA_GRAPHS && unsafe.empty() && !capture_failed_;
  if (cuda && options.step == "auto" && !unsafe.empty() && !warned_) {
    std::string names;
    for (const auto& b : unsafe) names += (names.empty() ? "" : ", ") + b;
    log_info("decoding eagerly: block " + names + " does not declare graph_safe_decode(), so the step is not captured");
    warned_ = true;
  }
  Slot& s = slot_for(N, L, p, graph);
  auto step_static = [&] {
    s.state.slot = s.column;
    auto h = model_.forward_hidden(s.tok, &s.state, Mode::Decode, s.pos);  // [N, 1, C]
    draw(s, head(h), p);
    s.column.add_(1);
    s.pos.add_(1);
  };
  if (graph && !s.graph) {
    // Captured once per slot, on whatever the buffers hold (the prefill below resets them).
    s.graph = std::make_unique<StepGraph>();
    std::string why;
    if (!s.graph->capture(step_static, &why)) {
      log_info("decoding eagerly from now on: capturing the decode step in a CUDA graph failed: " + why);
      s.graph.reset();
      capture_failed_ = true;
      graph = false;
    }
  }
  const bool static_step = graph || options.step == "static";
  last_graphed_ = graph;

  // Left-pad: prompt i sits at columns [P - len_i, P). Real tokens count positions from 0, so a
  // padded row sees exactly the positions it would alone; padding is never attended to.
  auto long_opts = at::TensorOptions().dtype(at::kLong);
  auto idx = at::zeros({n_prompts, P}, long_opts);
  auto real = at::zeros({n_prompts, L}, at::kBool);
  real.narrow(1, P, L - P).fill_(true);
  std::vector<int64_t> prompt_len(n_prompts);
  bool padded = false;
  for (int64_t i = 0; i < n_prompts; ++i) {
    const int64_t len = static_cast<int64_t>(prompts[i].size());
    prompt_len[i] = len;
    padded |= len < P;
    idx[i].narrow(0, P - len, len).copy_(at::tensor(prompts[i], long_opts));
    real[i].narrow(0, P - len, len).fill_(true);
  }
  auto rows = at::arange(n_prompts, long_opts).repeat_interleave(group);  // row r comes from prompt r / group
  s.key_padding.copy_(real.index_select(0, rows));
  at::Tensor positions;  // [n, P]
  if (padded) positions = (real.narrow(1, 0, P).to(at::kLong).cumsum(1) - 1).clamp_min(0).to(device);

  // Prefill (eager) into the slot's caches; each prompt once, its state repeated for its group.
  for (auto& layer : s.state.layers)
    for (auto& [k, t] : layer.tensors) t.zero_();
  ModelState pre = group == 1 ? s.state : model_.init_state(n_prompts, L);
  pre.slot = at::Tensor();
  pre.length = 0;
  pre.key_padding = padded ? real.to(device) : at::Tensor();
  auto h = model_.forward_hidden(idx.to(device), &pre, Mode::Prefill, positions).narrow(1, P - 1, 1);  // [n, 1, C]
  auto logits = head(h);                                                                                 // [n, V]
  if (group > 1) {
    auto dev_rows = rows.to(device);
    pre = pre.index_select(dev_rows);
    logits = logits.index_select(0, dev_rows);
  }
  keep_in_place(s.state, pre);
  s.state.key_padding = s.key_padding;
  s.state.length = P;
  s.pos.copy_(at::tensor(prompt_len, long_opts).index_select(0, rows).unsqueeze(1));
  s.column.fill_(P);
  s.counter.zero_();
  s.seed.fill_(static_cast<int64_t>((p.seed ^ (p.seed >> 32)) & 0xffffffffULL));
  s.done.zero_();
  draw(s, logits, p);  // the first new token, from the prefill's logits

  // The eager step: each block's usual Decode path on the same caches.
  ModelState eager = s.state;
  eager.slot = at::Tensor();
  eager.key_padding = padded ? s.key_padding : at::Tensor();
  auto step_eager = [&] {
    auto h = model_.forward_hidden(s.tok, &eager, Mode::Decode, s.pos);
    draw(s, head(h), p);
    s.pos.add_(1);
  };

  // Decode; the host reads the drawn tokens every `every` steps (EOS is handled on the device
  // meanwhile: a finished row keeps decoding a masked padding token) and stops the rows that end
  // on a stop sequence or whose callback says so.
  const int64_t every = options.sync_every > 0 ? options.sync_every : (cuda ? 16 : 1);
  std::vector<bool> done(N, false);
  std::vector<std::vector<bool>> live_cols;
  int64_t drawn = 1, seen = 0, n_live = N, length = 0;
  while (true) {
    if (drawn - seen >= every || drawn == budget) {
      auto toks = s.tokens.narrow(1, seen, drawn - seen).to(at::kCPU);
      auto acc = toks.accessor<int64_t, 2>();
      std::vector<int64_t> stopped_here;
      for (int64_t c = 0; c < drawn - seen && n_live > 0; ++c) {
        std::vector<bool> live(N, false);
        for (int64_t r = 0; r < N; ++r) {
          if (done[r]) continue;
          live[r] = true;
          const int64_t t = acc[r][c];
          out.completions[r].push_back(t);
          bool stop = t == p.eos_id;
          for (const auto& seq : p.stop_sequences) stop = stop || ends_with(out.completions[r], seq);
          out.stopped[r] = stop;
          if (on_token && !on_token(r, t)) stop = true;
          if (stop) {
            done[r] = true;
            --n_live;
            if (t != p.eos_id) stopped_here.push_back(r);
          }
        }
        live_cols.push_back(std::move(live));
        length = seen + c + 1;
      }
      seen = drawn;
      if (n_live == 0 || drawn == budget) break;
      if (!stopped_here.empty())
        s.done.index_fill_(0, at::tensor(stopped_here, long_opts).to(device), true);
    }
    if (graph) {
      s.graph->replay();
    } else if (static_step) {
      step_static();
    } else {
      step_eager();
    }
    ++drawn;
  }

  auto mask = at::zeros({N, length}, at::kBool);
  auto tokens = at::zeros({N, length}, at::kLong);
  auto macc = mask.accessor<bool, 2>();
  auto tacc = tokens.accessor<int64_t, 2>();
  for (int64_t c = 0; c < length; ++c)
    for (int64_t r = 0; r < N; ++r) macc[r][c] = live_cols[c][r];
  for (int64_t r = 0; r < N; ++r)
    for (size_t c = 0; c < out.completions[r].size(); ++c) tacc[r][static_cast<int64_t>(c)] = out.completions[r][c];
  out.tokens = tokens;
  out.mask = mask;
  out.logprobs = s.logprobs.narrow(1, 0, length).to(at::kCPU).masked_fill(mask.logical_not(), 0.0);
  return out;
}

}  // namespace linearnexus
