// Continuous batching on the decode engine (decode_stream.h): admission into a live cache, the steps,
// and the host's reading of each row's tokens.
#include "linearnexus/host/decode_stream.h"

#include <torch/nn.h>

#include <algorithm>

#include "decode_slot.h"
#include "linearnexus/error.h"

namespace linearnexus {

struct DecodeStream::Impl {
  DecodeGenerator& gen;
  SamplingParams params;
  std::unique_ptr<DecodeGenerator::Slot> slot;
  std::string how;     // the step: graph, static (DecodeGenerator::step, every row) or eager (eager_step)
  int64_t column = 0;  // the host's copy of slot->column: the column the next step writes
  int64_t every = 1, context = 0;

  // A row's host side. Its tokens sit in the history at columns [first, end): the first drawn from its
  // prompt's last logits (column c - 1 when it joined at column c), then one a step.
  struct Row {
    int64_t id = -1;  // -1: free
    int64_t next = 0, end = 0;
    std::vector<int64_t> completion;
    std::vector<std::vector<int64_t>> stops;
  };
  std::vector<Row> rows;

  Impl(DecodeGenerator& g, const SamplingParams& p) : gen(g), params(p) {}
  void eager_step(int64_t k);
  // eager_step's views of the first view_rows rows of the slot's buffers (0: none made yet).
  ModelState view;
  DecodeGenerator::Slot rows_k;
  int64_t view_rows = 0;
  int64_t budget(const StreamRequest& r) const {
    const int64_t len = static_cast<int64_t>(r.prompt.size());
    return std::min({r.max_new_tokens, context - len, slot->L - len});
  }
  void prefill(const std::vector<StreamRequest>& joining, const std::vector<int64_t>& free_rows, int64_t c,
               bool restart);
};

DecodeStream::DecodeStream(DecodeGenerator& generator, int64_t rows, const SamplingParams& params, int64_t cache_len)
    : impl_(std::make_unique<Impl>(generator, params)) {
  if (rows < 1) throw Error("decode stream: rows must be at least 1 (got " + std::to_string(rows) + ")");
  torch::NoGradGuard no_grad;
  Impl& s = *impl_;
  s.gen.weights_.refresh();
  s.context = s.gen.weights_.model().config().dims.max_seq_len;
  const int64_t L = cache_len > 0 ? std::min(cache_len, s.context) : s.context;
  if (L < 2) throw Error("decode stream: the cache needs at least 2 columns (got " + std::to_string(L) + ")");
  const bool cuda = s.gen.weights_.device().is_cuda();
  bool graph = s.gen.use_graph(cuda);
  s.slot = s.gen.make_slot(rows, L, /*seed_per_row=*/true, /*stream=*/true);
  s.gen.capture(*s.slot, params, &graph);  // its warm-up steps ran on the buffers: start from a clean slate
  s.how = graph ? "graph" : s.gen.options.step == "static" ? "static" : "eager";
  auto& slot = *s.slot;
  for (auto& layer : slot.state.layers)
    for (auto& kv : layer.tensors) kv.second.zero_();
  slot.key_padding.fill_(true);
  for (auto* t : {&slot.tok, &slot.pos, &slot.column, &slot.counter, &slot.tokens}) t->zero_();
  slot.done.fill_(true);
  s.every = s.gen.options.sync_every > 0 ? s.gen.options.sync_every : (cuda ? 16 : 1);
  s.rows.assign(static_cast<size_t>(rows), Impl::Row{});
}

DecodeStream::~DecodeStream() = default;

int64_t DecodeStream::rows() const { return impl_->slot->N; }
const SamplingParams& DecodeStream::params() const { return impl_->params; }
bool DecodeStream::graphed() const { return impl_->how == "graph"; }
int64_t DecodeStream::live_rows() const {
  return std::count_if(impl_->rows.begin(), impl_->rows.end(), [](const Impl::Row& r) { return r.id >= 0; });
}

void DecodeStream::cancel(int64_t id) {
  for (auto& r : impl_->rows)
    if (r.id == id) r = Impl::Row{};
}

int64_t DecodeStream::admit(const std::vector<StreamRequest>& requests) {
  Impl& s = *impl_;
  const int64_t L = s.slot->L;
  for (const auto& r : requests) {
    const int64_t len = static_cast<int64_t>(r.prompt.size());
    const std::string who = "decode stream: request " + std::to_string(r.id);
    if (len == 0) throw Error(who + " has an empty prompt");
    if (len >= std::min(s.context, L))
      throw Error(who + ": a prompt of " + std::to_string(len) +
                  " tokens leaves no room to generate (the cache holds " + std::to_string(L) +
                  " columns, model.max_seq_len is " + std::to_string(s.context) + ")");
    if (r.max_new_tokens < 1) throw Error(who + ": max_new_tokens must be at least 1");
  }
  std::vector<int64_t> free_rows;
  for (size_t i = 0; i < s.rows.size(); ++i)
    if (s.rows[i].id < 0) free_rows.push_back(static_cast<int64_t>(i));
  const bool idle = free_rows.size() == s.rows.size();
  // The longest prefix that fits: in a running batch each prompt must end at the current column and
  // its budget end within the cache; an idle batch starts again at the longest prompt it takes.
  int64_t n = 0, c = s.column, longest = 0, last_end = 0;
  for (const auto& r : requests) {
    if (n == static_cast<int64_t>(free_rows.size())) break;
    const int64_t len = static_cast<int64_t>(r.prompt.size());
    if (idle) {
      const int64_t l = std::max(longest, len), e = std::max(last_end, s.budget(r));
      if (l + e - 1 > L) break;
      longest = l, last_end = e;
    } else if (len > c || c + s.budget(r) - 1 > L) {
      break;
    }
    ++n;
  }
  if (n == 0) return 0;
  if (idle) c = longest;
  free_rows.resize(static_cast<size_t>(n));
  s.prefill(std::vector<StreamRequest>(requests.begin(), requests.begin() + n), free_rows, c, idle);
  return n;
}

// The joining prompts, left-padded to the longest (P) and prefilled as one small batch whose state
// already holds c - P columns of padding, so that its columns are the live batch's; then their rows
// of every state tensor are copied into the free rows and their first tokens drawn.
void DecodeStream::Impl::prefill(const std::vector<StreamRequest>& joining, const std::vector<int64_t>& free_rows,
                                 int64_t c, bool restart) {
  torch::NoGradGuard no_grad;
  const int64_t n = static_cast<int64_t>(joining.size()), L = slot->L;
  const auto device = gen.weights_.device();
  const auto longs = at::TensorOptions().dtype(at::kLong);
  std::vector<std::vector<int64_t>> prompts;
  std::vector<int64_t> seeds;
  for (const auto& r : joining) {
    prompts.push_back(r.prompt);
    seeds.push_back(fold_seed(r.seed));
  }
  const LeftPadded in = left_pad(prompts, c, L, device);  // each prompt ends at column c
  if (restart) {                                          // an idle batch starts again at column c
    slot->pos.zero_();                                    // free rows too: a position never passes its column
    slot->column.fill_(c);
    column = c;
  }
  LMModel& m = gen.weights_.model();
  ModelState pre = m.init_state(n, L);
  pre.length = c - in.P;                       // the columns before the longest prompt: padding
  const at::Tensor real = in.real.to(device);  // [n, L]
  if (in.padded) pre.key_padding = real;
  auto h = m.forward_hidden(in.ids.to(device), &pre, Mode::Prefill, in.positions).narrow(1, in.P - 1, 1);  // [n, 1, C]
  auto logits = gen.weights_.logits(h);                                                                    // [n, V]

  auto dev_rows = at::tensor(free_rows, longs).to(device);
  ModelState& dst = slot->state;
  for (size_t l = 0; l < pre.layers.size(); ++l)
    for (const auto& [name, t] : pre.layers[l].tensors) {
      auto it = dst.layers[l].tensors.find(name);
      if (it == dst.layers[l].tensors.end() || it->second.sizes().slice(1) != t.sizes().slice(1))
        throw Error("decode stream: block " + std::to_string(l) + " (" + m.block_kinds()[l] + ")'s prefilled state '" +
                    name +
                    "' does not match its decoding state's shape; continuous batching needs a block's state "
                    "tensors to keep their shapes (model.h, LayerState)");
      it->second.index_copy_(0, dev_rows, t.to(it->second.scalar_type()));
    }
  slot->key_padding.index_copy_(0, dev_rows, real);

  auto dev_seeds = at::tensor(seeds, longs).to(device);
  auto next = sample_tokens(logits, params, dev_seeds, at::zeros({n}, longs.device(device)));  // [n]
  auto logp = drawn_logprobs(logits, next, params);                                            // [n]
  slot->tok.index_copy_(0, dev_rows, next.unsqueeze(1));
  slot->pos.index_copy_(0, dev_rows, at::tensor(in.lens, longs).to(device).unsqueeze(1));
  slot->counter.index_fill_(0, dev_rows, 1);
  slot->seed.index_copy_(0, dev_rows, dev_seeds);
  slot->done.index_copy_(0, dev_rows, params.eos_id >= 0 ? next == params.eos_id : at::zeros_like(next, at::kBool));
  slot->tokens.select(1, c - 1).index_copy_(0, dev_rows, next);
  slot->logprobs.select(1, c - 1).index_copy_(0, dev_rows, logp);
  for (int64_t i = 0; i < n; ++i) {
    Row& row = rows[static_cast<size_t>(free_rows[static_cast<size_t>(i)])];
    const auto& r = joining[static_cast<size_t>(i)];
    row.id = r.id;
    row.next = c - 1;
    row.end = c - 1 + budget(r);
    row.completion.clear();
    row.stops = r.stop_sequences;
  }
}

// The eager step (no captured graph, on the CPU say) on rows [0, k) only: without a graph the step's
// cost grows with its rows, and free rows past the last live one need none. Views of the first k rows
// of every buffer; a state tensor a block hands back in place of its own is copied into the view.
void DecodeStream::Impl::eager_step(int64_t k) {
  DecodeGenerator::Slot& full = *slot;
  if (view_rows != k) {  // the views are made again only when the last live row moves
    view = full.state;
    for (auto& layer : view.layers)
      for (auto& kv : layer.tensors) kv.second = kv.second.narrow(0, 0, k);
    view.slot = at::Tensor();
    view.key_padding = full.key_padding.narrow(0, 0, k);
    rows_k.stream = true;  // the same buffers' first k rows; the column is shared
    rows_k.N = k;
    rows_k.L = full.L;
    rows_k.column = full.column;
    rows_k.tok = full.tok.narrow(0, 0, k);
    rows_k.pos = full.pos.narrow(0, 0, k);
    rows_k.counter = full.counter.narrow(0, 0, k);
    rows_k.seed = full.seed.narrow(0, 0, k);
    rows_k.done = full.done.narrow(0, 0, k);
    rows_k.tokens = full.tokens.narrow(0, 0, k);
    rows_k.logprobs = full.logprobs.narrow(0, 0, k);
    view_rows = k;
  }
  view.length = column;
  ModelState work = view;
  auto h = gen.weights_.model().forward_hidden(rows_k.tok, &work, Mode::Decode, rows_k.pos);  // [k, 1, C]
  view.keep_in_place(work);
  draw(rows_k, gen.weights_.logits(h), params);
  full.column.add_(1);
  rows_k.pos.add_(1);
}

std::vector<StreamToken> DecodeStream::advance() {
  Impl& s = *impl_;
  std::vector<StreamToken> out;
  // need: steps until every live row has its last token; lo: the first column a live row has not read;
  // k: rows [0, k) hold every live row (admission fills the lowest free rows).
  int64_t need = 0, lo = s.column, k = 0;
  for (size_t i = 0; i < s.rows.size(); ++i)
    if (s.rows[i].id >= 0) {
      need = std::max(need, s.rows[i].end - s.column);
      lo = std::min(lo, s.rows[i].next);
      k = static_cast<int64_t>(i) + 1;
    }
  if (k == 0) return out;
  torch::NoGradGuard no_grad;
  // Never past a live row's last token, so the column stays inside the cache (admission checked it).
  for (int64_t i = 0; i < std::min(s.every, need); ++i) {
    if (s.how == "eager")
      s.eager_step(k);
    else
      s.gen.step(*s.slot, s.params, s.how, s.slot->state);
    ++s.column;
  }
  const int64_t hi = s.column;
  auto toks = s.slot->tokens.narrow(1, lo, hi - lo).to(at::kCPU);
  auto lps = s.slot->logprobs.narrow(1, lo, hi - lo).to(at::kCPU);
  auto tacc = toks.accessor<int64_t, 2>();
  auto lacc = lps.accessor<float, 2>();
  for (size_t i = 0; i < s.rows.size(); ++i) {
    auto& r = s.rows[i];
    for (; r.id >= 0 && r.next < std::min(hi, r.end); ++r.next) {
      const int64_t t = tacc[static_cast<int64_t>(i)][r.next - lo];
      r.completion.push_back(t);
      bool stopped = t == s.params.eos_id;
      for (const auto& seq : r.stops) stopped = stopped || ends_with_tokens(r.completion, seq);
      StreamToken e;
      e.id = r.id;
      e.token = t;
      e.logprob = lacc[static_cast<int64_t>(i)][r.next - lo];
      e.last = stopped || r.next + 1 == r.end;
      e.stopped = stopped;
      out.push_back(e);
      if (e.last) r = Impl::Row{};
    }
  }
  return out;
}

}  // namespace linearnexus
