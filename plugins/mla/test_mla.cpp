// The mla block: causality, cached (absorbed) decoding == full forward, absorbed == naive decoding,
// left padding, the latent cache's size, a hybrid [mla, attention] model, and tiny Shakespeare.
#include <nlohmann/json.hpp>

#include <cmath>
#include <fstream>
#include <iostream>
#include <map>

#include "catch.h"
#include "linearnexus/generate.h"
#include "linearnexus/model.h"
#include "linearnexus/host/plugin_host.h"
#include "linearnexus/host/session.h"
#include "test_util.h"

using namespace linearnexus;
using namespace lntest;

namespace {

constexpr int64_t kVocab = 17;

// A small mla model; `extra` are --set overrides (e.g. non-default head dims).
std::shared_ptr<LMModel> make_model(PluginHost& host, const std::vector<std::string>& extra = {},
                                    const std::string& pattern = "[mla]", int64_t hidden = 32, int64_t n_layer = 2) {
  std::vector<std::string> o{"model.block_pattern=" + pattern, "model.hidden_size=" + std::to_string(hidden),
                             "model.n_layer=" + std::to_string(n_layer)};
  o.insert(o.end(), extra.begin(), extra.end());
  Experiment e = parse(R"(
data: {path: "builtin:arithmetic"}
model: {hidden_size: 32, n_layer: 2, max_seq_len: 64, block_pattern: [mla]}
)",
                       host, o);
  auto m = std::make_shared<LMModel>(e.model_config(kVocab), host.registry());
  m->eval();
  return m;
}

// Non-default shapes: every width different, so a transposed or mixed-up dimension cannot pass.
const std::vector<std::string> kOddDims{"model.blocks.mla.n_head=4",           "model.blocks.mla.kv_lora_rank=12",
                                        "model.blocks.mla.qk_nope_head_dim=6", "model.blocks.mla.qk_rope_head_dim=4",
                                        "model.blocks.mla.v_head_dim=10",      "model.blocks.mla.q_lora_rank=20"};

std::vector<std::string> with(std::vector<std::string> a, const std::string& b) {
  a.push_back(b);
  return a;
}

// Cached decoding: prefill `prefill` tokens, then one token at a time; logits [B, T, V].
at::Tensor cached_logits(LMModel& m, const at::Tensor& idx, int64_t prefill) {
  ModelState s = m.init_state(idx.size(0), idx.size(1));
  std::vector<at::Tensor> parts{m.forward(idx.narrow(1, 0, prefill), &s, Mode::Prefill)};
  for (int64_t t = prefill; t < idx.size(1); ++t) parts.push_back(m.forward(idx.narrow(1, t, 1), &s, Mode::Decode));
  return at::cat(parts, 1);
}

void copy_weights(LMModel& from, LMModel& to) {
  torch::NoGradGuard g;
  auto src = from.named_parameters();
  for (auto& kv : to.named_parameters()) kv.value().copy_(src[kv.key()]);
}

double max_diff(const at::Tensor& a, const at::Tensor& b) { return (a - b).abs().max().item<double>(); }

}  // namespace

TEST_CASE("mla is causal: outputs at t ignore tokens after t", "[mla]") {
  PluginHost host;
  for (const auto& dims : {std::vector<std::string>{}, kOddDims}) {
    torch::manual_seed(0);
    auto m = make_model(host, dims);
    torch::NoGradGuard g;
    auto idx = torch::randint(0, kVocab, {2, 20}, at::kLong);
    auto changed = idx.clone();
    changed.narrow(1, 12, 8).random_(0, kVocab);
    auto a = m->forward(idx), b = m->forward(changed);
    CHECK(torch::allclose(a.narrow(1, 0, 12), b.narrow(1, 0, 12), 1e-6, 1e-6));
    CHECK_FALSE(torch::allclose(a.narrow(1, 12, 8), b.narrow(1, 12, 8), 1e-3, 1e-3));
  }
}

TEST_CASE("mla cached decoding equals the full forward (absorbed and naive, full- and low-rank queries)", "[mla]") {
  PluginHost host;
  for (const auto& dims : {std::vector<std::string>{}, kOddDims}) {
    for (const std::string decode : {"absorbed", "naive"}) {
      torch::manual_seed(1);
      auto m = make_model(host, with(dims, "model.blocks.mla.decode=" + decode));
      torch::NoGradGuard g;
      auto idx = torch::randint(0, kVocab, {3, 24}, at::kLong);
      auto full = m->forward(idx);
      for (int64_t prefill : {1, 7}) {
        auto cached = cached_logits(*m, idx, prefill);
        INFO("decode " << decode << ", dims " << (dims.empty() ? "default" : "odd") << ", prefill " << prefill
                       << ": max diff " << max_diff(full, cached));
        CHECK(torch::allclose(cached, full, 1e-5, 1e-5));
      }
      // Several tokens at once in decode mode (a causal mask over the cache's tail) agree too.
      ModelState s = m->init_state(3, 24);
      auto head = m->forward(idx.narrow(1, 0, 10), &s, Mode::Prefill);
      auto tail = m->forward(idx.narrow(1, 10, 14), &s, Mode::Decode);
      CHECK(torch::allclose(at::cat({head, tail}, 1), full, 1e-5, 1e-5));
    }
  }
}

TEST_CASE("mla absorbed decoding equals naive (materialising) decoding", "[mla]") {
  PluginHost host;
  for (const auto& dims : {std::vector<std::string>{}, kOddDims}) {
    torch::manual_seed(2);
    auto absorbed = make_model(host, with(dims, "model.blocks.mla.decode=absorbed"), "[mla]", 32, 3);
    auto naive = make_model(host, with(dims, "model.blocks.mla.decode=naive"), "[mla]", 32, 3);
    copy_weights(*absorbed, *naive);
    torch::NoGradGuard g;
    auto idx = torch::randint(0, kVocab, {4, 40}, at::kLong);
    ModelState sa = absorbed->init_state(4, 40), sn = naive->init_state(4, 40);
    absorbed->forward(idx.narrow(1, 0, 8), &sa, Mode::Prefill);
    naive->forward(idx.narrow(1, 0, 8), &sn, Mode::Prefill);
    for (int64_t t = 8; t < 40; ++t) {
      auto a = absorbed->forward(idx.narrow(1, t, 1), &sa, Mode::Decode);
      auto n = naive->forward(idx.narrow(1, t, 1), &sn, Mode::Decode);
      INFO("step " << t << " max diff " << max_diff(a, n));
      REQUIRE(torch::allclose(a, n, 1e-4, 1e-5));
    }
    // Both wrote the same latent cache.
    for (size_t l = 0; l < sa.layers.size(); ++l)
      for (const char* k : {"c_kv", "k_rope"})
        CHECK(torch::allclose(sa.layers[l].tensors[k], sn.layers[l].tensors[k], 1e-5, 1e-6));
  }
}

TEST_CASE("mla batched decoding with left padding matches each prompt decoded alone", "[mla]") {
  PluginHost host;
  torch::manual_seed(3);
  auto m = make_model(host, kOddDims);
  torch::NoGradGuard g;
  // Row 0: a 5-token prompt left-padded by 3; row 1: an 8-token prompt. Then 6 decode steps.
  const int64_t P = 8, pad = 3, steps = 6, L = P + steps;
  auto seqs = torch::randint(1, kVocab, {2, L}, at::kLong);
  auto batch = seqs.clone();
  batch[0].narrow(0, 0, pad).fill_(0);
  ModelState s = m->init_state(2, L);
  s.key_padding = at::ones({2, L}, at::kBool);
  s.key_padding[0].narrow(0, 0, pad).fill_(false);
  // Real tokens count positions from 0; padding sits at position 0 too (it is never attended to).
  auto pos = (s.key_padding.to(at::kLong).cumsum(1) - 1).clamp_min(0);  // [2, L]
  std::vector<at::Tensor> parts{m->forward(batch.narrow(1, 0, P), &s, Mode::Prefill, pos.narrow(1, 0, P))};
  for (int64_t t = P; t < L; ++t)
    parts.push_back(m->forward(batch.narrow(1, t, 1), &s, Mode::Decode, pos.narrow(1, t, 1)));
  auto batched = at::cat(parts, 1);                                        // [2, L, V]
  auto alone0 = m->forward(seqs[0].narrow(0, pad, L - pad).unsqueeze(0));  // [1, L - pad, V]
  auto alone1 = m->forward(seqs[1].unsqueeze(0));
  INFO("max diff row 0 " << max_diff(batched[0].narrow(0, pad, L - pad), alone0[0]) << ", row 1 "
                         << max_diff(batched[1], alone1[0]));
  CHECK(torch::allclose(batched[0].narrow(0, pad, L - pad), alone0[0], 1e-5, 1e-5));
  CHECK(torch::allclose(batched[1], alone1[0], 1e-5, 1e-5));
}

TEST_CASE("mla caches d_c + d_rope numbers per token per layer, far fewer than attention", "[mla]") {
  PluginHost host;
  struct Width {
    int64_t hidden, n_head;
    std::vector<std::string> mla;
    int64_t dc, dr;  // what the mla settings mean
  };
  // A tiny odd shape, the defaults at a small width, and gpt-small's width with DeepSeek-like dims
  // (d_c = 4 head_dim = 256, d_rope = head_dim / 2 = 32: the defaults there).
  std::vector<Width> widths{{32, 4, kOddDims, 12, 4},
                            {96, 4, {"model.blocks.mla.n_head=4"}, 48, 12},
                            {768, 12, {"model.blocks.mla.n_head=12"}, 256, 32}};
  for (const auto& w : widths) {
    auto mla = make_model(host, w.mla, "[mla]", w.hidden, 2);
    auto att =
        make_model(host, {"model.blocks.attention.n_head=" + std::to_string(w.n_head)}, "[attention]", w.hidden, 2);
    const int64_t B = 3, L = 50;
    ModelState ms = mla->init_state(B, L), as = att->init_state(B, L);
    for (const auto& layer : ms.layers) {
      // Exactly the two latent tensors, nothing per head.
      REQUIRE(layer.tensors.size() == 2);
      const auto& c = layer.tensors.at("c_kv");
      const auto& k = layer.tensors.at("k_rope");
      CHECK(c.sizes() == at::IntArrayRef({B, L, w.dc}));
      CHECK(k.sizes() == at::IntArrayRef({B, L, w.dr}));
      CHECK(layer.bytes() == B * L * (w.dc + w.dr) * 4);
    }
    // Bytes per token per layer, from the tensors the states actually hold.
    const double mla_bpt = static_cast<double>(ms.bytes()) / (B * L * 2);
    const double att_bpt = static_cast<double>(as.bytes()) / (B * L * 2);
    CHECK(mla_bpt == (w.dc + w.dr) * 4);
    CHECK(att_bpt == 2 * w.hidden * 4);
    CHECK(mla_bpt < att_bpt);
    std::cout << "[mla cache] hidden " << w.hidden << ", " << w.n_head << " heads: mla (d_c " << w.dc << ", d_rope "
              << w.dr << ") " << mla_bpt << " B/token/layer vs attention (MHA) " << att_bpt
              << " B/token/layer: " << att_bpt / mla_bpt << "x smaller\n";
  }
  // The cache really is what decoding reads: a prefill fills exactly the first T latent rows.
  torch::manual_seed(4);
  auto m = make_model(host, kOddDims);
  torch::NoGradGuard g;
  ModelState s = m->init_state(2, 30);
  m->forward(torch::randint(0, kVocab, {2, 9}, at::kLong), &s, Mode::Prefill);
  for (const auto& layer : s.layers) {
    CHECK(layer.tensors.at("c_kv").narrow(1, 0, 9).abs().sum().item<double>() > 0);
    CHECK(layer.tensors.at("c_kv").narrow(1, 9, 21).abs().sum().item<double>() == 0);
  }
}

TEST_CASE("mla declares fused splits that tile its fused weights, bad shapes are clear errors", "[mla]") {
  PluginHost host;
  for (const auto& dims : {std::vector<std::string>{}, kOddDims}) {
    auto m = make_model(host, dims);
    const auto& block = m->blocks().front();
    auto params = block->named_parameters();
    const auto splits = block->fused_splits();
    CHECK(splits.count("kv_down.weight") == 1);  // [c_kv | k_rope]
    CHECK(splits.count("kv_up.weight") == 1);    // [W_UK | W_UV]
    for (const auto& [name, rows] : splits) {
      INFO(name);
      REQUIRE(params.contains(name));
      int64_t sum = 0;
      for (int64_t r : rows) sum += r;
      CHECK(sum == params[name].size(0));
    }
  }
  CHECK_CONTAINS(error_of([&] { make_model(host, {"model.blocks.mla.qk_rope_head_dim=5"}); }),
                 "qk_rope_head_dim must be even");
  CHECK_CONTAINS(error_of([&] { make_model(host, {"model.blocks.mla.decode=fast"}); }), "decode");
}

TEST_CASE("a hybrid [mla, attention] model trains and generates with its cache", "[mla][training]") {
  PluginHost host;
  TempDir t;
  Experiment e = parse(R"(
name: hybrid
seed: 5
data: {path: "builtin:arithmetic", seq_len: 32}
model: {hidden_size: 48, n_layer: 2, max_seq_len: 64, dropout: 0.0, block_pattern: [mla, attention],
        blocks: {mla: {n_head: 4, q_lora_rank: 24}, attention: {n_head: 4}}}
optimizer: {name: adamw, lr: 5e-3}
schedule: {warmup_steps: 10}
trainer: {name: sft, max_steps: 60, batch_size: 8, log_every: 1, eval_every: 60, eval_batches: 2, save_every: 1000}
)",
                       host, {"trainer.out_dir=" + (t / "run")});
  auto s = prepare_run(e, host);
  host.registry().make_trainer(e.trainer_name, e.trainer_params)->run(*s);
  auto m = read_metrics(t / "run");
  REQUIRE(m.size() == 61);  // step 0 (val_loss) and 60 steps
  auto mean_loss = [&](int64_t from, int64_t to) {
    double sum = 0;
    for (int64_t i = from; i <= to; ++i) sum += m[i]["loss"].get<double>();
    return sum / (to - from + 1);
  };
  INFO("loss, first 5 steps " << mean_loss(1, 5) << ", last 5 " << mean_loss(56, 60));
  CHECK(mean_loss(56, 60) < mean_loss(1, 5) - 0.25);
  auto& model = s->model();
  REQUIRE(model.block_kinds() == std::vector<std::string>{"mla", "attention"});

  // Greedy generation with the cache == greedy generation re-running the whole sequence each step.
  model.eval();
  torch::NoGradGuard g;
  std::vector<int64_t> prompt{3, 5, 7, 2, 9};
  SamplingParams greedy;
  greedy.temperature = 0;
  greedy.max_new_tokens = 30;
  auto cached = generate(model, prompt, greedy);
  std::vector<int64_t> seq = prompt, uncached;
  for (int i = 0; i < 30; ++i) {
    auto logits = model.forward(at::tensor(seq, at::kLong).unsqueeze(0));  // [1, T, V]
    int64_t tok = logits[0][-1].argmax().item<int64_t>();
    uncached.push_back(tok);
    seq.push_back(tok);
  }
  CHECK(cached == uncached);
  // And the cached logits equal the full forward's.
  auto idx = at::tensor(seq, at::kLong).unsqueeze(0);
  CHECK(torch::allclose(cached_logits(model, idx, 5), model.forward(idx), 1e-5, 1e-5));
}

TEST_CASE("configs/mla_shakespeare.yaml learns tiny Shakespeare (val loss 0.5 nats under the unigram entropy)",
          "[mla][e2e]") {
  const std::string path = shared_data("tinyshakespeare.txt");
  if (path.empty()) LN_SKIP("tinyshakespeare.txt not found under " LINEARNEXUS_SHARED_DATA_DIR);
  PluginHost host;
  TempDir t;
  // The shipped config, shortened and narrowed so the test takes well under a minute on 2 cores; the
  // full config trains longer and wider (see docs/benchmarks.md).
  Experiment e = load_experiment(LINEARNEXUS_SOURCE_DIR "/configs/mla_shakespeare.yaml",
                                 {"data.path=" + path,
                                  "trainer.out_dir=" + (t / "run"),
                                  "data.seq_len=64",
                                  "model.hidden_size=64",
                                  "model.n_layer=2",
                                  "model.dropout=0.0",
                                  "model.blocks.mla.n_head=4",
                                  "model.blocks.mla.kv_lora_rank=32",
                                  "model.blocks.mla.qk_nope_head_dim=16",
                                  "model.blocks.mla.qk_rope_head_dim=8",
                                  "model.blocks.mla.v_head_dim=16",
                                  "trainer.max_steps=150",
                                  "trainer.batch_size=16",
                                  "trainer.log_every=50",
                                  "trainer.eval_every=150",
                                  "trainer.eval_batches=10",
                                  "trainer.save_every=1000",
                                  "optimizer.lr=5e-3",
                                  "schedule.warmup_steps=15",
                                  "schedule.min_lr=5e-4"},
                                 host);
  REQUIRE(e.model_config(65).block_pattern == std::vector<std::string>{"mla"});
  auto s = prepare_run(e, host);
  host.registry().make_trainer(e.trainer_name, e.trainer_params)->run(*s);
  auto m = read_metrics(t / "run");
  REQUIRE_FALSE(m.empty());
  const double val = m.rbegin()->second["val_loss"].get<double>();
  INFO("validation loss " << val << " (unigram entropy 3.31)");
  CHECK(val <= 2.81);
}
