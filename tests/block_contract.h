#pragma once
// The state / cache contract of a recurrent block, as checks any block's test can run on itself
// (plugins/gla, mamba2, deltanet use them; see docs/writing_plugins.md section 5):
//   - the chunked training form == the token-by-token reference (scan: recurrent), outputs and every
//     parameter's gradient, at T that are not multiples of the chunk;
//   - Prefill of any prefix + Decode of the rest == Train, at every split point;
//   - T = 4096 with strong decays stays finite (and equals the reference);
//   - the state's bytes do not depend on the sequence length;
//   - batched left-padded generation == each prompt alone; a hybrid with attention decodes like its
//     uncached forward; the static decoding path (what a CUDA graph replays) == the eager one;
//   - a small model learns tiny Shakespeare.
#include <cmath>
#include <map>

#include "catch.h"
#include "linearnexus/host/generator.h"
#include "linearnexus/model.h"
#include "linearnexus/host/plugin_host.h"
#include "linearnexus/registry.h"
#include "test_util.h"

namespace lntest {

using namespace linearnexus;
using KV = std::map<std::string, std::string>;

// make_test_block (test_util.h) builds the blocks.

inline void copy_parameters(torch::nn::Module& dst, torch::nn::Module& src) {
  torch::NoGradGuard g;
  auto s = src.named_parameters();
  for (auto& kv : dst.named_parameters()) kv.value().copy_(s[kv.key()]);
}

// Set parameters by name (e.g. a gate's bias far negative: strong decays).
inline void fill_parameters(torch::nn::Module& m, const std::map<std::string, double>& values) {
  torch::NoGradGuard g;
  auto ps = m.named_parameters();
  for (const auto& [k, v] : values) {
    REQUIRE(ps.contains(k));
    ps[k].fill_(v);
  }
}

// a == b up to rtol, with an absolute floor scaled to b's magnitude (sums in another order differ
// by rounding near zero).
inline bool close(const at::Tensor& a, const at::Tensor& b, double rtol = 1e-4) {
  const double scale = b.abs().max().item<double>();
  return torch::allclose(a, b, rtol, 1e-5 * scale + 1e-12);
}
inline double max_diff(const at::Tensor& a, const at::Tensor& b) { return (a - b).abs().max().item<double>(); }

// Four prompts of uneven lengths (3, 9, 1, 6 tokens; ids < 20): batched generation left-pads them.
inline std::vector<std::vector<int64_t>> padded_prompts() {
  auto prompt = [](int64_t len, int64_t seed) {
    std::vector<int64_t> p;
    for (int64_t i = 0; i < len; ++i) p.push_back((seed * 7 + i * 13 + i * i) % 20);
    return p;
  };
  return {prompt(3, 1), prompt(9, 2), prompt(1, 3), prompt(6, 4)};
}

inline BlockOutput run_block(Block& b, const at::Tensor& x, LayerState s, Mode mode, int64_t start = 0) {
  ForwardContext ctx;
  ctx.mode = mode;
  ctx.start = start;
  return b.forward(x, std::move(s), ctx);
}

// How a contract check builds its pair of blocks: the reference form's value of the block's `scan`
// key ("recurrent" for core's chunked-scan blocks, "sequential" for mamba's), and parameters moved
// off their initialisation in both copies, as after training: set to a constant (`tweak`: a gate's
// bias far negative makes strong decays) or given N(0, std) noise (`noise`: decays that differ per
// channel).
struct Reference {
  std::string scan = "recurrent";
  std::map<std::string, double> tweak, noise;
};

inline void add_noise(torch::nn::Module& m, const std::map<std::string, double>& stds) {
  torch::NoGradGuard g;
  auto ps = m.named_parameters();
  for (const auto& [k, std] : stds) {
    REQUIRE(ps.contains(k));
    ps[k].add_(torch::randn_like(ps[k]) * std);
  }
}

// Chunked (kv's scan) == the reference form in outputs, the input's and every parameter's gradient,
// and in what Prefill returns (the output and every state tensor), for each T.
inline void check_chunked_matches_recurrent(PluginHost& host, const std::string& name, KV kv, int64_t C,
                                            const std::vector<int64_t>& Ts, const Reference& reference = {}) {
  for (int64_t T : Ts) {
    INFO(name << " T " << T);
    torch::manual_seed(10 + T);
    auto chunk = make_test_block(host, name, C, kv);
    chunk->eval();
    fill_parameters(*chunk, reference.tweak);
    add_noise(*chunk, reference.noise);
    KV ref_kv = kv;
    ref_kv["scan"] = reference.scan;
    auto ref = make_test_block(host, name, C, ref_kv);
    ref->eval();
    copy_parameters(*ref, *chunk);
    auto x = torch::randn({2, T, C}), r = torch::randn({2, T, C});
    auto xc = x.clone().requires_grad_(true), xr = x.clone().requires_grad_(true);
    auto yc = run_block(*chunk, xc, {}, Mode::Train).y, yr = run_block(*ref, xr, {}, Mode::Train).y;
    INFO("output max diff " << max_diff(yc, yr));
    CHECK(close(yc, yr));
    (yc * r).sum().backward();
    (yr * r).sum().backward();
    CHECK(close(xc.grad(), xr.grad()));
    auto rp = ref->named_parameters();
    for (const auto& p : chunk->named_parameters()) {
      const auto &gc = p.value().grad(), &gr = rp[p.key()].grad();
      INFO("parameter " << p.key());
      REQUIRE(gc.defined());
      REQUIRE(gr.defined());
      CHECK(torch::isfinite(gc).all().item<bool>());
      INFO("grad max diff " << max_diff(gc, gr) << " of max " << gr.abs().max().item<double>());
      CHECK(close(gc, gr));
    }
    torch::NoGradGuard g;
    auto pc = run_block(*chunk, x, chunk->init_state(2, T, x.options()), Mode::Prefill);
    auto pr = run_block(*ref, x, ref->init_state(2, T, x.options()), Mode::Prefill);
    CHECK(close(pc.y, pr.y));
    CHECK(close(pc.y, yc.detach()));
    REQUIRE(pc.state.tensors.size() == pr.state.tensors.size());
    for (const auto& [key, t] : pr.state.tensors) {
      INFO("prefill state " << key << " max diff " << max_diff(pc.state.tensors.at(key), t));
      CHECK(close(pc.state.tensors.at(key), t));
    }
  }
}

// Prefill of the first P tokens, then Decode token by token (and, once, several tokens in one
// call), == Train over all T, for every P in [0, T].
inline void check_prefill_decode_every_split(PluginHost& host, const std::string& name, const KV& kv, int64_t C,
                                             int64_t T) {
  torch::manual_seed(4);
  auto b = make_test_block(host, name, C, kv);
  b->eval();
  torch::NoGradGuard g;
  const int64_t B = 3;
  auto x = torch::randn({B, T, C});
  auto full = run_block(*b, x, {}, Mode::Train).y;
  for (int64_t P = 0; P <= T; ++P) {
    INFO(name << " prefill " << P << " of " << T);
    LayerState s = b->init_state(B, T, x.options());
    std::vector<at::Tensor> ys;
    if (P > 0) {
      auto o = run_block(*b, x.narrow(1, 0, P), std::move(s), Mode::Prefill);
      ys.push_back(o.y);
      s = std::move(o.state);
    }
    for (int64_t t = P; t < T;) {
      const int64_t n = (t == P + 1 && t + 3 <= T) ? 3 : 1;  // one Decode call of 3 tokens
      auto o = run_block(*b, x.narrow(1, t, n), std::move(s), Mode::Decode, t);
      ys.push_back(o.y);
      s = std::move(o.state);
      t += n;
    }
    auto pd = at::cat(ys, 1);
    INFO("max diff " << max_diff(pd, full));
    CHECK(close(pd, full));
  }
}

// T tokens with `reference`'s parameters (strong decays): finite outputs and gradients, and the
// chunked output equals the reference form's.
inline void check_long_sequence(PluginHost& host, const std::string& name, KV kv, int64_t C, const Reference& reference,
                                int64_t T = 4096) {
  torch::manual_seed(3);
  auto b = make_test_block(host, name, C, kv);
  fill_parameters(*b, reference.tweak);
  add_noise(*b, reference.noise);
  auto x = torch::randn({1, T, C}).requires_grad_(true);
  auto y = run_block(*b, x, {}, Mode::Train).y;
  CHECK(torch::isfinite(y).all().item<bool>());
  y.pow(2).mean().backward();
  CHECK(torch::isfinite(x.grad()).all().item<bool>());
  for (const auto& p : b->named_parameters()) {
    INFO("parameter " << p.key());
    CHECK(torch::isfinite(p.value().grad()).all().item<bool>());
  }
  kv["scan"] = reference.scan;
  auto ref = make_test_block(host, name, C, kv);
  copy_parameters(*ref, *b);
  torch::NoGradGuard g;
  auto yr = run_block(*ref, x.detach(), {}, Mode::Train).y;
  INFO("max diff " << max_diff(y, yr));
  CHECK(close(y.detach(), yr));
}

// The state's bytes per sequence are the same for max_len 16 and 4096, and after prompts of 5 and 300
// (a sliding window's cache is the window, or max_len when that is shorter).
inline void check_state_size_fixed(PluginHost& host, const std::string& name, const KV& kv, int64_t C) {
  auto b = make_test_block(host, name, C, kv);
  b->eval();
  torch::NoGradGuard g;
  const auto o = at::TensorOptions().dtype(at::kFloat);
  const int64_t bytes = b->init_state(1, 16, o).bytes();
  CHECK(bytes > 0);
  CHECK(b->init_state(1, 4096, o).bytes() == bytes);
  CHECK(b->init_state(2, 16, o).bytes() == 2 * bytes);
  for (int64_t T : {5, 300}) {
    auto out = run_block(*b, torch::randn({1, T, C}), b->init_state(1, 4096, o), Mode::Prefill);
    CHECK(out.state.bytes() == bytes);
  }
}

// Every parameter has a declared role (none left to the shape-based default), and the decay-making
// ones named in `not_matrices` are not Muon matrices.
inline void check_roles_declared(PluginHost& host, const std::string& name, const KV& kv, int64_t C,
                                 const std::vector<std::string>& not_matrices) {
  auto b = make_test_block(host, name, C, kv);
  const auto roles = b->parameter_roles();
  for (const auto& p : b->named_parameters()) {
    INFO(name << " parameter " << p.key());
    CHECK(roles.count(p.key()) == 1);
  }
  for (const auto& n : not_matrices) {
    INFO(name << " parameter " << n);
    REQUIRE(roles.count(n) == 1);
    CHECK(roles.at(n) != ParamRole::Matrix);
  }
}

// A 2-layer model of `pattern` with `blocks` (a YAML map of block parameters), its embeddings
// scaled up so that greedy choices are not near-ties rounding could flip.
inline std::shared_ptr<LMModel> contract_model(PluginHost& host, const std::string& pattern, const std::string& blocks,
                                               int64_t n_layer = 2) {
  Experiment e =
      parse("data: {path: \"builtin:arithmetic\"}\nmodel: {hidden_size: 32, n_layer: " + std::to_string(n_layer) +
                ", max_seq_len: 64, blocks: " + blocks + "}\n",
            host, {"model.block_pattern=" + pattern});
  torch::manual_seed(3);
  auto m = std::make_shared<LMModel>(e.model_config(20), host.registry());
  torch::NoGradGuard g;
  for (auto& kv : m->named_parameters())
    if (kv.key() == "wte.weight") kv.value().mul_(50.0);
  m->eval();
  return m;
}

// The generator's static decoding path (ForwardContext::slot: the step a CUDA graph captures) draws the
// eager path's tokens with the eager path's log-probs: greedy, and sampled with a seed, on
// left-padded prompts in groups, with a stop sequence. `step` "static" runs the path without a graph,
// on any device.
inline void check_static_decoding(const LMModel& m, const std::vector<std::vector<int64_t>>& prompts,
                                  int64_t max_new = 10) {
  auto run = [&](const std::string& step, const SamplingParams& sp) {
    DecodeOptions options;
    options.step = step;
    return generate_batch(m, prompts, sp, 2, nullptr, options);
  };
  SamplingParams greedy, sampled;
  greedy.temperature = 0;
  greedy.max_new_tokens = sampled.max_new_tokens = max_new;
  sampled.temperature = 0.8;
  sampled.top_k = 12;
  sampled.seed = 7;
  sampled.stop_sequences = {{3}};
  for (const auto& sp : {greedy, sampled}) {
    INFO("temperature " << sp.temperature);
    GeneratedBatch e = run("eager", sp), s = run("static", sp);
    CHECK(s.completions == e.completions);
    CHECK(s.stopped == e.stopped);
    REQUIRE(s.logprobs.sizes() == e.logprobs.sizes());
    CHECK((s.logprobs - e.logprobs).abs().max().item<double>() < 1e-4);
  }
}

// Batched greedy generation of left-padded prompts == each prompt alone; cached decoding of the model
// == its uncached forward; the static decoding path == the eager one.
inline void check_generation(PluginHost& host, const std::string& pattern, const std::string& blocks) {
  INFO("block_pattern " << pattern);
  auto m = contract_model(host, pattern, blocks, 3);
  torch::NoGradGuard g;
  auto idx = torch::randint(0, 20, {2, 30}, at::kLong);
  auto full = m->forward(idx);
  ModelState s = m->init_state(2, 30);
  std::vector<at::Tensor> parts{m->forward(idx.narrow(1, 0, 11), &s, Mode::Prefill)};
  for (int64_t t = 11; t < 30; ++t) parts.push_back(m->forward(idx.narrow(1, t, 1), &s, Mode::Decode));
  auto cached = at::cat(parts, 1);
  INFO("cached vs full max diff " << max_diff(cached, full));
  CHECK(close(cached, full));

  auto prompt = [](int64_t len, int64_t seed) {
    std::vector<int64_t> p;
    for (int64_t i = 0; i < len; ++i) p.push_back((seed * 7 + i * 13 + i * i) % 20);
    return p;
  };
  std::vector<std::vector<int64_t>> prompts{prompt(3, 1), prompt(9, 2), prompt(1, 3), prompt(6, 4)};
  SamplingParams greedy;
  greedy.temperature = 0;
  greedy.max_new_tokens = 10;
  GeneratedBatch b = generate_batch(*m, prompts, greedy, 1);
  REQUIRE(b.completions.size() == prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) {
    INFO("prompt " << i);
    CHECK(b.completions[i] == generate(*m, prompts[i], greedy));
  }
  check_static_decoding(*m, prompts);
}

inline double unigram_entropy(const std::string& path) {
  std::string text = read_text(path);
  std::map<char, double> counts;
  for (char c : text) counts[c] += 1;
  double H = 0;
  for (auto& [c, n] : counts) H -= n / text.size() * std::log(n / text.size());
  return H;
}

// A small char model (`model_yaml`: the model section) trains 100 steps on tiny Shakespeare; its
// validation loss must end `margin` nats under the unigram entropy. Skips without the data.
inline void check_learns_shakespeare(const std::string& model_yaml, double margin = 0.5) {
  const std::string path = shared_data("tinyshakespeare.txt");
  if (path.empty()) LN_SKIP("tinyshakespeare.txt not found under " LINEARNEXUS_SHARED_DATA_DIR);
  at::set_num_threads(1);  // ctest runs test cases side by side on 2 cores
  const double H = unigram_entropy(path);
  TempDir t;
  train_experiment(std::string("name: block-e2e\ndata: {path: \"") + path + "\", seq_len: 64}\n" + model_yaml + R"(
optimizer: {name: adamw, lr: 5e-3}
schedule: {warmup_steps: 20, min_lr: 5e-4}
trainer: {name: sft, max_steps: 100, batch_size: 16, log_every: 25, eval_every: 100, eval_batches: 8}
)",
                   {"trainer.out_dir=" + (t / "run")});
  auto m = read_metrics(t / "run");
  REQUIRE_FALSE(m.empty());
  const double val = m.rbegin()->second["val_loss"].get<double>();
  INFO("validation loss " << val << " vs unigram entropy " << H);
  CHECK(val < H - margin);
}

}  // namespace lntest
