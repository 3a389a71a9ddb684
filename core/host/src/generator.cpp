// The host's generator (generator.h): the inference replica, prefill, the one-token step (eager,
// static or replayed from a CUDA graph), the host's every-k-steps check of the tokens, assembly.
#include "linearnexus/host/generator.h"

#include <torch/nn.h>

#include <algorithm>
#include <sstream>

#include "decode_slot.h"
#include "linearnexus/compat.h"
#include "linearnexus/error.h"
#include "linearnexus/layers.h"
#include "linearnexus/log.h"
#include "linearnexus/registry.h"
#include "linearnexus/rng.h"

namespace linearnexus {

namespace {
int64_t round_up(int64_t n, int64_t to) { return (n + to - 1) / to * to; }
}  // namespace

// ---- weights: the inference replica ---------------------------------------------------------------

InferenceModel::InferenceModel(const LMModel& source, const Registry& registry) : source_(source) {
  // Building the replica initialises weights that build() then replaces with the source's; the CPU
  // generator's state is put back, so making a generator draws nothing from the stream a run's
  // dropout and sampled labels use (a resumed run stays exact).
  const at::Tensor rng = rng_state(at::kCPU);
  replica_ = std::make_shared<LMModel>(source.config(), registry);
  set_rng_state(rng, at::kCPU, "the generator's replica");
  replica_->eval();
  build();
}

at::Device InferenceModel::device() const { return device_; }

// Where autocast would cast a Linear's fp32 weight to bf16 at every token, the replica's Linear holds
// a bf16 copy instead (not its bias: a block may read that in fp32 outside the Linear, as mamba's
// scan does dt_proj's); every other tensor of the replica is the source's own (shared storage).
void InferenceModel::build() {
  torch::NoGradGuard no_grad;
  device_ = source_.head_weight().device();
  dtype_ = source_.compute_dtype();
  replica_->set_compute_dtype(dtype_);
  const bool low_precision = device_.is_cuda() && dtype_ != at::kFloat;
  std::set<std::string> linear_weights;
  if (low_precision)
    for (const auto& m : replica_->named_modules("", /*include_self=*/false))
      if (std::dynamic_pointer_cast<torch::nn::LinearImpl>(m.value())) linear_weights.insert(m.key() + ".weight");
  aliases_.clear();
  copies_.clear();
  const auto source_params = source_.named_parameters(), source_buffers = source_.named_buffers();
  auto bind = [&](const std::string& name, at::Tensor replica, const at::Tensor& src) {
    if (linear_weights.count(name)) {
      Copy c{src, at::empty_like(src, src.options().dtype(dtype_)), -1};
      replica.set_data(c.copy);
      copies_.push_back(std::move(c));
    } else {
      replica.set_data(src.detach());
      aliases_.emplace_back(src, replica);
    }
  };
  for (auto& kv : replica_->named_parameters()) bind(kv.key(), kv.value(), source_params[kv.key()]);
  for (auto& kv : replica_->named_buffers()) bind(kv.key(), kv.value(), source_buffers[kv.key()]);
  head_ = device_.is_cuda() ? source_.head(dtype_, /*padded=*/true).detach().clone() : at::Tensor();
  // Made here, never while a step is captured (the kernel leaves it zeroed for the next call).
  head_workspace_ = head_.defined() ? greedy_head_workspace(replica_->config().dims.vocab_size, device_) : at::Tensor();
  head_version_ = static_cast<int64_t>(source_.head_weight()._version());
}

void InferenceModel::refresh() {
  torch::NoGradGuard no_grad;
  bool moved = source_.head_weight().device() != device_ || source_.compute_dtype() != dtype_;
  for (const auto& [src, rep] : aliases_) moved = moved || src.data_ptr() != rep.data_ptr();
  if (moved) return build();
  for (auto& c : copies_)
    if (c.version != static_cast<int64_t>(c.source._version())) {
      c.copy.copy_(c.source);
      c.version = static_cast<int64_t>(c.source._version());
    }
  if (head_.defined() && head_version_ != static_cast<int64_t>(source_.head_weight()._version())) {
    head_.copy_(source_.head(dtype_, /*padded=*/true));
    head_version_ = static_cast<int64_t>(source_.head_weight()._version());
  }
}

at::Tensor InferenceModel::logits(const at::Tensor& h) {
  // h: [R, 1, C] -> [R, V]
  if (!head_.defined()) return replica_->lm_logits(h).select(1, 0);
  const int64_t V = replica_->config().dims.vocab_size;
  auto x = h.select(1, 0).to(head_.scalar_type());  // [R, C]
  // At one row the skinny matmul (linear_forward) beat cuBLAS on this [50304, 768] head (H100: ~28.7
  // against 30.8 us), at 16 rows cuBLAS won (31.9 against 35.7 us; docs/benchmarks.md): rows <= 8 take it.
  if (x.size(0) <= 8) return linear_forward(x, head_).narrow(-1, 0, V);
  return at::matmul(x, head_.t()).narrow(-1, 0, V);
}

at::Tensor InferenceModel::logits_of_stream(const at::Tensor& x) {
  // x: [R, 1, C] -> [R, V]
  if (head_.defined() && x.size(0) <= 8) {  // logits' rule: the skinny matmul for <= 8 rows
    // The stream is fp32 under bf16 autocast: the kernel normalises it and rounds to bf16, as the
    // final norm then the cast to the head's dtype do.
    compat::AutocastGuard autocast(dtype_ != at::kFloat, dtype_);
    auto y = norm_linear_fused(replica_->final_norm_module(), x.select(1, 0), head_);  // [R, V rounded up]
    if (y.defined()) return y.narrow(-1, 0, replica_->config().dims.vocab_size);
  }
  return logits(replica_->final_norm(x));
}

bool InferenceModel::greedy_of_stream(const at::Tensor& x, at::Tensor* token, at::Tensor* logp) {
  // x: [R, 1, C] -> token, logp [R]
  if (!head_.defined() || x.size(0) > 8) return false;
  compat::AutocastGuard autocast(dtype_ != at::kFloat, dtype_);
  auto r = norm_greedy_head(replica_->final_norm_module(), x.select(1, 0), head_, replica_->config().dims.vocab_size,
                            head_workspace_);
  if (!r.first.defined()) return false;
  *token = r.first, *logp = r.second;
  return true;
}

// One call's host side: its prompts, how far it may decode, and what the host has read so far.
struct DecodeGenerator::Call {
  std::vector<std::vector<int64_t>> prompts;
  std::vector<uint64_t> row_seeds;  // empty: every row seeded by params.seed
  int64_t group = 1, P = 0, budget = 0, N = 0;
  std::vector<std::vector<int64_t>> completions;  // per row, the tokens read so far
  std::vector<bool> stopped, done;
  std::vector<std::vector<bool>> live_cols;  // per drawn column, which rows were still live
  int64_t drawn = 0, seen = 0, n_live = 0, length = 0;
};

DecodeGenerator::DecodeGenerator(const LMModel& model, const Registry& registry, DecodeOptions opts)
    : options(std::move(opts)), weights_(model, registry) {}
DecodeGenerator::~DecodeGenerator() = default;
void DecodeGenerator::clear() { slots_.clear(); }

std::vector<std::string> DecodeGenerator::blocks_not_graph_safe() const {
  std::vector<std::string> out;
  auto& m = const_cast<InferenceModel&>(weights_).model();
  const auto kinds = m.block_kinds();
  for (size_t i = 0; i < kinds.size(); ++i)
    if (!m.blocks()[i]->graph_safe_decode() && std::find(out.begin(), out.end(), kinds[i]) == out.end())
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

at::Tensor drawn_logprobs(const at::Tensor& logits, const at::Tensor& next, const SamplingParams& p) {
  // logits [N, V], next [N] -> [N]
  const double temp = p.temperature > 0 ? p.temperature : 1.0;
  auto scaled = logits.to(at::kFloat);
  scaled = (scaled - std::get<0>(scaled.max(-1, /*keepdim=*/true))) / temp;  // as sample_tokens: no inf - inf
  return at::log_softmax(scaled, -1).gather(1, next.unsqueeze(1)).squeeze(1);
}

void draw(DecodeGenerator::Slot& s, const at::Tensor& logits, const SamplingParams& p) {
  auto next = sample_tokens(logits, p, s.seed, s.counter);  // [N]
  record_draw(s, next, drawn_logprobs(logits, next, p), p);
}

void record_draw(DecodeGenerator::Slot& s, at::Tensor next, const at::Tensor& logp, const SamplingParams& p) {
  // next, logp: [N]
  // Finished rows decode a padding token (cheaper than compacting the batch); the host's mask of
  // live tokens, built as it reads the tokens, zeroes their log-probs at the end.
  next = next.masked_fill(s.done, 0);
  const at::Tensor& index = s.stream ? s.column : s.counter;
  s.tokens.index_copy_(1, index, next.unsqueeze(1));
  s.logprobs.index_copy_(1, index, logp.unsqueeze(1));
  if (p.eos_id >= 0) s.done.logical_or_(next == p.eos_id);
  s.tok.copy_(next.unsqueeze(1));
  s.counter.add_(1);
}

int64_t fold_seed(uint64_t seed) { return static_cast<int64_t>((seed ^ (seed >> 32)) & 0xffffffffULL); }

bool ends_with_tokens(const std::vector<int64_t>& s, const std::vector<int64_t>& tail) {
  return !tail.empty() && s.size() >= tail.size() && std::equal(tail.rbegin(), tail.rend(), s.rbegin());
}

LeftPadded left_pad(const std::vector<std::vector<int64_t>>& prompts, int64_t end, int64_t L,
                    const at::Device& device) {
  LeftPadded out;
  const int64_t n = static_cast<int64_t>(prompts.size());
  for (const auto& p : prompts) out.P = std::max<int64_t>(out.P, static_cast<int64_t>(p.size()));
  const auto longs = at::TensorOptions().dtype(at::kLong);
  out.ids = at::zeros({n, out.P}, longs);
  out.real = at::zeros({n, L}, at::kBool);
  out.real.narrow(1, end, L - end).fill_(true);
  out.padded = end > out.P;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t len = static_cast<int64_t>(prompts[static_cast<size_t>(i)].size());
    out.lens.push_back(len);
    out.padded |= len < out.P;
    out.ids[i].narrow(0, out.P - len, len).copy_(at::tensor(prompts[static_cast<size_t>(i)], longs));
    out.real[i].narrow(0, end - len, len).fill_(true);
  }
  if (out.padded)
    out.positions = (out.real.narrow(1, end - out.P, out.P).to(at::kLong).cumsum(1) - 1).clamp_min(0).to(device);
  return out;
}

DecodeGenerator::Slot& DecodeGenerator::slot_for(int64_t N, int64_t L, const SamplingParams& p, bool graph,
                                                 bool seed_per_row) {
  auto key = std::make_tuple(N, L, sampling_key(p, graph) + (seed_per_row ? " seed per row" : ""));
  auto it = slots_.find(key);
  if (it != slots_.end()) return *it->second;
  if (slots_.size() >= 8) slots_.clear();  // each holds a whole cache: keep a few shapes only
  return *slots_.emplace(key, make_slot(N, L, seed_per_row, false)).first->second;
}

std::unique_ptr<DecodeGenerator::Slot> DecodeGenerator::make_slot(int64_t N, int64_t L, bool seed_per_row,
                                                                  bool stream) {
  auto s = std::make_unique<Slot>();
  s->stream = stream;
  s->N = N;
  s->L = L;
  s->state = weights_.model().init_state(N, L);
  auto longs = at::TensorOptions().dtype(at::kLong).device(weights_.device());
  s->key_padding = at::ones({N, L}, longs.dtype(at::kBool));
  s->tok = at::zeros({N, 1}, longs);
  s->pos = at::zeros({N, 1}, longs);
  s->column = at::zeros({1}, longs);
  s->counter = at::zeros({stream ? N : 1}, longs);
  s->seed = at::zeros({seed_per_row || stream ? N : 1}, longs);
  s->state.key_padding = s->key_padding;
  s->done = at::zeros({N}, longs.dtype(at::kBool));
  s->tokens = at::zeros({N, L}, longs);
  s->logprobs = at::zeros({N, L}, longs.dtype(at::kFloat));
  return s;
}

// ---- step -----------------------------------------------------------------------------------------

bool DecodeGenerator::use_graph(bool cuda) {
  const auto unsafe = blocks_not_graph_safe();
  if (cuda && options.step == "auto" && !unsafe.empty() && !warned_) {
    std::string names;
    for (const auto& b : unsafe) names += (names.empty() ? "" : ", ") + b;
    log_info("decoding eagerly: block " + names + " does not declare graph_safe_decode(), so the step is not captured");
    warned_ = true;
  }
  return cuda && options.step == "auto" && LINEARNEXUS_HAS_CUDA_GRAPHS && unsafe.empty() && !capture_failed_;
}

// The static step (decode_slot.h): a stream's history is indexed by the column the step runs at.
void static_step(InferenceModel& w, DecodeGenerator::Slot& s, const SamplingParams& p) {
  s.state.slot = s.column;
  if (decode_fusion_enabled()) {  // the final norm inside the head's kernel (layers.h)
    auto x = w.model().forward_stream(s.tok, &s.state, Mode::Decode, s.pos);  // [N, 1, C] before the norm
    at::Tensor next, logp;
    if (p.temperature <= 0 && w.greedy_of_stream(x, &next, &logp))  // greedy: no [N, V] logits at all
      record_draw(s, next, logp, p);
    else
      draw(s, w.logits_of_stream(x), p);
  } else {
    auto h = w.model().forward_hidden(s.tok, &s.state, Mode::Decode, s.pos);  // [N, 1, C]
    draw(s, w.logits(h), p);
  }
  s.column.add_(1);
  s.pos.add_(1);
}

void DecodeGenerator::capture(Slot& s, const SamplingParams& p, bool* graph) {
  if (!*graph || s.graph) return;
  // Captured once per slot, on whatever the buffers hold (the prefill that follows resets them).
  s.graph = std::make_unique<StepGraph>();
  std::string why;
  if (!s.graph->capture([&] { static_step(weights_, s, p); }, &why)) {
    log_info("decoding eagerly from now on: capturing the decode step in a CUDA graph failed: " + why);
    s.graph.reset();
    capture_failed_ = true;
    *graph = false;
  }
}

void DecodeGenerator::step(Slot& s, const SamplingParams& p, const std::string& how, ModelState& eager) {
  if (how == "graph") return s.graph->replay();
  if (how == "static") return static_step(weights_, s, p);
  // Eager: each block's usual Decode path on the same caches.
  auto h = weights_.model().forward_hidden(s.tok, &eager, Mode::Decode, s.pos);
  draw(s, weights_.logits(h), p);
  s.pos.add_(1);
}

// ---- prefill ----------------------------------------------------------------------------------------

// Left-pad: prompt i sits at columns [P - len_i, P). Real tokens count positions from 0, so a padded
// row sees exactly the positions it would alone; padding is never attended to. Each prompt is
// prefilled once (eagerly) and its state repeated for its group; the first token is drawn from the
// prefill's logits.
void DecodeGenerator::prefill(Slot& s, const Call& c, const SamplingParams& p) {
  const int64_t n_prompts = static_cast<int64_t>(c.prompts.size()), P = c.P;
  const auto device = weights_.device();
  auto long_opts = at::TensorOptions().dtype(at::kLong);
  const LeftPadded in = left_pad(c.prompts, P, s.L, device);
  auto rows = at::arange(n_prompts, long_opts).repeat_interleave(c.group);  // row r comes from prompt r / group
  s.key_padding.copy_(in.real.index_select(0, rows));

  for (auto& layer : s.state.layers)
    for (auto& [k, t] : layer.tensors) t.zero_();
  LMModel& m = weights_.model();
  ModelState pre = c.group == 1 ? s.state : m.init_state(n_prompts, s.L);
  pre.slot = at::Tensor();
  pre.length = 0;
  pre.key_padding = in.padded ? in.real.to(device) : at::Tensor();
  auto h = m.forward_hidden(in.ids.to(device), &pre, Mode::Prefill, in.positions).narrow(1, P - 1, 1);  // [n, 1, C]
  auto logits = weights_.logits(h);                                                                     // [n, V]
  if (c.group > 1) {
    auto dev_rows = rows.to(device);
    pre = pre.index_select(dev_rows);
    logits = logits.index_select(0, dev_rows);
  }
  s.state.keep_in_place(pre);
  s.state.key_padding = s.key_padding;
  s.state.length = P;
  s.pos.copy_(at::tensor(in.lens, long_opts).index_select(0, rows).unsqueeze(1));
  s.column.fill_(P);
  s.counter.zero_();
  if (c.row_seeds.empty()) {
    s.seed.fill_(fold_seed(p.seed));
  } else {
    std::vector<int64_t> folded;
    for (uint64_t seed : c.row_seeds) folded.push_back(fold_seed(seed));
    s.seed.copy_(at::tensor(folded, long_opts));
  }
  s.done.zero_();
  draw(s, logits, p);
}

// ---- host check -------------------------------------------------------------------------------------

// The host reads the tokens drawn since its last look, ends the rows that hit EOS, a stop sequence or
// whose callback says so (the device then masks them), and says whether decoding is over.
bool DecodeGenerator::read_tokens(Slot& s, Call& c, const SamplingParams& p, const TokenCallback& on_token) {
  auto toks = s.tokens.narrow(1, c.seen, c.drawn - c.seen).to(at::kCPU);
  auto acc = toks.accessor<int64_t, 2>();
  std::vector<int64_t> stopped_here;
  for (int64_t col = 0; col < c.drawn - c.seen && c.n_live > 0; ++col) {
    std::vector<bool> live(c.N, false);
    for (int64_t r = 0; r < c.N; ++r) {
      if (c.done[r]) continue;
      live[r] = true;
      const int64_t t = acc[r][col];
      c.completions[r].push_back(t);
      bool stop = t == p.eos_id;
      for (const auto& seq : p.stop_sequences) stop = stop || ends_with_tokens(c.completions[r], seq);
      c.stopped[r] = stop;
      if (on_token && !on_token(r, t)) stop = true;
      if (stop) {
        c.done[r] = true;
        --c.n_live;
        if (t != p.eos_id) stopped_here.push_back(r);
      }
    }
    c.live_cols.push_back(std::move(live));
    c.length = c.seen + col + 1;
  }
  c.seen = c.drawn;
  if (c.n_live == 0 || c.drawn == c.budget) return true;
  if (!stopped_here.empty())
    s.done.index_fill_(0, at::tensor(stopped_here, at::TensorOptions().dtype(at::kLong)).to(s.done.device()), true);
  return false;
}

// ---- assembly ---------------------------------------------------------------------------------------

GeneratedBatch DecodeGenerator::assemble(const Slot& s, Call& c) const {
  GeneratedBatch out;
  auto mask = at::zeros({c.N, c.length}, at::kBool);
  auto tokens = at::zeros({c.N, c.length}, at::kLong);
  auto macc = mask.accessor<bool, 2>();
  auto tacc = tokens.accessor<int64_t, 2>();
  for (int64_t col = 0; col < c.length; ++col)
    for (int64_t r = 0; r < c.N; ++r) macc[r][col] = c.live_cols[col][r];
  for (int64_t r = 0; r < c.N; ++r)
    for (size_t col = 0; col < c.completions[r].size(); ++col)
      tacc[r][static_cast<int64_t>(col)] = c.completions[r][col];
  out.tokens = tokens;
  out.mask = mask;
  out.logprobs = s.logprobs.narrow(1, 0, c.length).to(at::kCPU).masked_fill(mask.logical_not(), 0.0);
  out.completions = std::move(c.completions);
  out.stopped = std::move(c.stopped);
  return out;
}

// ---- generate ---------------------------------------------------------------------------------------

GeneratedBatch DecodeGenerator::generate(const std::vector<std::vector<int64_t>>& prompts, const SamplingParams& p,
                                         int64_t group, const TokenCallback& on_token) {
  return run(prompts, p, group, {}, on_token);
}

GeneratedBatch DecodeGenerator::generate_seeded(const std::vector<std::vector<int64_t>>& prompts,
                                                const SamplingParams& p, const std::vector<uint64_t>& row_seeds,
                                                const TokenCallback& on_token) {
  if (row_seeds.size() != prompts.size())
    throw Error("generate_seeded: " + std::to_string(row_seeds.size()) + " seeds for " +
                std::to_string(prompts.size()) + " prompts");
  return run(prompts, p, 1, row_seeds, on_token);
}

GeneratedBatch DecodeGenerator::run(const std::vector<std::vector<int64_t>>& prompts, const SamplingParams& p,
                                    int64_t group, const std::vector<uint64_t>& row_seeds,
                                    const TokenCallback& on_token) {
  if (prompts.empty()) throw Error("generate: no prompts");
  if (group < 1) throw Error("generate: num_return_sequences must be at least 1 (got " + std::to_string(group) + ")");
  if (options.step != "auto" && options.step != "eager" && options.step != "static")
    throw Error("generator: step must be auto, eager or static (got '" + options.step + "')");
  torch::NoGradGuard no_grad;
  weights_.refresh();

  const int64_t max_len = weights_.model().config().dims.max_seq_len;
  Call c;
  c.prompts = prompts;
  c.row_seeds = row_seeds;
  c.group = group;
  for (auto& prompt : c.prompts) {
    if (prompt.empty()) throw Error("generate: a prompt is empty (no token of it is in the vocabulary?)");
    if (static_cast<int64_t>(prompt.size()) >= max_len) {
      log_warn("prompt of " + std::to_string(prompt.size()) + " tokens keeps only its last " +
               std::to_string(max_len / 2) + " (model.max_seq_len = " + std::to_string(max_len) + ")");
      prompt.erase(prompt.begin(), prompt.end() - max_len / 2);
    }
    c.P = std::max<int64_t>(c.P, static_cast<int64_t>(prompt.size()));
  }
  c.budget = std::min<int64_t>(p.max_new_tokens, max_len - c.P);
  if (c.budget < p.max_new_tokens)
    log_warn("generation stops after " + std::to_string(c.budget) + " tokens at model.max_seq_len");
  c.N = static_cast<int64_t>(c.prompts.size()) * group;
  c.completions.assign(c.N, {});
  c.stopped.assign(c.N, false);
  c.done.assign(c.N, false);
  c.n_live = c.N;
  if (c.budget <= 0) {
    GeneratedBatch out;
    out.tokens = at::zeros({c.N, 0}, at::kLong);
    out.logprobs = at::zeros({c.N, 0}, at::kFloat);
    out.mask = at::zeros({c.N, 0}, at::kBool);
    out.completions = std::move(c.completions);
    out.stopped = std::move(c.stopped);
    return out;
  }
  const bool cuda = weights_.device().is_cuda();
  // The cache length in buckets of 256 columns, so other prompt lengths reuse the slot (and graph).
  const int64_t L = std::min<int64_t>(max_len, round_up(c.P + c.budget, 256));
  bool graph = use_graph(cuda);
  Slot& s = slot_for(c.N, L, p, graph, !c.row_seeds.empty());
  capture(s, p, &graph);
  last_graphed_ = graph;
  const std::string how = graph ? "graph" : options.step == "static" ? "static" : "eager";

  prefill(s, c, p);
  c.drawn = 1;
  ModelState eager = s.state;  // the eager step's view of the same caches
  eager.slot = at::Tensor();
  bool padded = false;
  for (const auto& prompt : c.prompts) padded |= static_cast<int64_t>(prompt.size()) < c.P;
  eager.key_padding = padded ? s.key_padding : at::Tensor();

  const int64_t every = options.sync_every > 0 ? options.sync_every : (cuda ? 16 : 1);
  while (true) {
    if ((c.drawn - c.seen >= every || c.drawn == c.budget) && read_tokens(s, c, p, on_token)) break;
    step(s, p, how, eager);
    ++c.drawn;
  }
  return assemble(s, c);
}

}  // namespace linearnexus
