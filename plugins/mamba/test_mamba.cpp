// The mamba block: chunked scan == sequential reference (outputs, gradients, long sequences),
// recurrent decoding == chunked prefill, cached generation of mamba and hybrid models == uncached
// forwards, the model presets' sizes, and small models learning tiny Shakespeare.
#include "block_contract.h"
#include "linearnexus/host/presets.h"
#include "linearnexus/host/session.h"

using namespace lntest;

// The block contract's checks (tests/block_contract.h) with mamba's reference form, scan: sequential.
TEST_CASE("mamba: chunked and fused scans == sequential reference in outputs, every gradient and prefill's state",
          "[mamba]") {
  PluginHost host;
  // scan: chunk is the batched-op path; auto is the fused CPU kernel here (fp32 on the CPU).
  // 37 = 4 chunks of 8 + 5; 5 < one chunk. Width 24: a block of 16 channels and a partial one.
  // A_log differs per channel after training: noise on it, the same in both copies.
  for (const std::string scan : {"chunk", "auto"})
    for (int64_t N : {1, 4, 16}) {
      INFO("scan " << scan << ", d_state " << N);
      check_chunked_matches_recurrent(
          host, "mamba", {{"d_state", std::to_string(N)}, {"chunk_size", "8"}, {"dt_max", "0.5"}, {"scan", scan}}, 24,
          {37, 5}, Reference{"sequential", {}, {{"A_log", 0.3}}});
    }
}

TEST_CASE("mamba: T = 4096 with strong decays stays finite and matches the reference", "[mamba]") {
  PluginHost host;
  // delta in [0.5, 2] and A down to -16: the log-decay summed over a chunk reaches ~ -2000 and over
  // the sequence ~ -1e5; exponentiating its negation (a positive cumulative sum) would give inf.
  for (const std::string scan : {"chunk", "auto"}) {
    INFO("scan " << scan);
    check_long_sequence(host, "mamba", {{"d_state", "16"}, {"dt_min", "0.5"}, {"dt_max", "2.0"}, {"scan", scan}}, 8,
                        Reference{"sequential", {}, {}});
  }
}

TEST_CASE("mamba: prefill of any prefix + decode of the rest == the chunked scan, a prefill continues a state",
          "[mamba]") {
  PluginHost host;
  check_prefill_decode_every_split(host, "mamba", {{"chunk_size", "8"}, {"dt_max", "0.5"}}, 16, 29);
  // A prefill continuing a state (a second prompt piece) also matches.
  torch::manual_seed(4);
  auto b = make_test_block(host, "mamba", 16, {{"chunk_size", "8"}, {"dt_max", "0.5"}});
  b->eval();
  torch::NoGradGuard g;
  const int64_t B = 3, T = 29;
  auto x = torch::randn({B, T, 16});
  auto full = run_block(*b, x, {}, Mode::Train).y;
  auto o1 = run_block(*b, x.narrow(1, 0, 10), b->init_state(B, T, x.options()), Mode::Prefill);
  auto o2 = run_block(*b, x.narrow(1, 10, T - 10), std::move(o1.state), Mode::Prefill, 10);
  CHECK(close(at::cat({o1.y, o2.y}, 1), full));
}

namespace {

std::shared_ptr<LMModel> make_lm(PluginHost& host, const std::string& pattern) {
  Experiment e = parse(R"(
data: {path: "builtin:arithmetic"}
model: {hidden_size: 32, n_layer: 3, max_seq_len: 64, blocks: {mamba: {chunk_size: 8, dt_max: 0.5}, attention: {n_head: 4}}}
)",
                       host, {"model.block_pattern=" + pattern});
  auto m = std::make_shared<LMModel>(e.model_config(17), host.registry());
  m->eval();
  return m;
}

}  // namespace

TEST_CASE("mamba: cached generation of mamba-only and hybrid models == uncached full forwards", "[mamba]") {
  PluginHost host;
  for (std::string pattern : {"[mamba]", "[mamba, mamba, attention]"}) {
    torch::manual_seed(5);
    auto m = make_lm(host, pattern);
    INFO("block_pattern " << pattern);
    torch::NoGradGuard g;
    auto idx = torch::randint(0, 17, {2, 30}, at::kLong);
    auto full = m->forward(idx);
    ModelState s = m->init_state(2, 30);
    // Both kinds of cache live side by side in one model state.
    if (pattern != "[mamba]") {
      CHECK(s.layers[0].tensors.count("ssm_state") == 1);
      CHECK(s.layers[2].tensors.count("k") == 1);
    }
    std::vector<at::Tensor> parts{m->forward(idx.narrow(1, 0, 11), &s, Mode::Prefill)};
    for (int64_t t = 11; t < 30; ++t) parts.push_back(m->forward(idx.narrow(1, t, 1), &s, Mode::Decode));
    auto cached = at::cat(parts, 1);
    INFO("max diff " << max_diff(cached, full));
    CHECK(close(cached, full));

    // generate() (prefill + cached greedy decoding) picks the tokens uncached forwards pick.
    std::vector<int64_t> prompt{1, 5, 9, 2, 7};
    SamplingParams sp;
    sp.temperature = 0;
    sp.max_new_tokens = 12;
    auto gen = generate(*m, prompt, sp);
    std::vector<int64_t> seq = prompt, ref;
    for (int i = 0; i < 12; ++i) {
      auto logits = m->forward(at::tensor(seq, at::kLong).unsqueeze(0)).select(1, -1);  // [1, V]
      ref.push_back(logits.argmax(-1).item<int64_t>());
      seq.push_back(ref.back());
    }
    CHECK(gen == ref);
  }
}

TEST_CASE("mamba: left-padded rows decode like unpadded ones", "[mamba]") {
  PluginHost host;
  torch::manual_seed(6);
  auto m = make_lm(host, "[mamba]");
  torch::NoGradGuard g;
  auto idx = torch::randint(1, 17, {1, 12}, at::kLong);
  auto ref = m->forward(idx);
  // The same row behind 4 padding tokens.
  auto padded = at::cat({at::zeros({1, 4}, at::kLong), idx}, 1);
  ModelState s = m->init_state(1, 16);
  s.key_padding = at::cat({at::zeros({1, 4}, at::kBool), at::ones({1, 12}, at::kBool)}, 1);
  auto a = m->forward(padded.narrow(1, 0, 10), &s, Mode::Prefill);
  auto b = m->forward(padded.narrow(1, 10, 6), &s, Mode::Decode);
  CHECK(close(at::cat({a, b}, 1).narrow(1, 4, 12), ref));
}

TEST_CASE("model presets build with the expected parameter counts", "[mamba][presets]") {
  PluginHost host;
  const int64_t V = 50257;
  auto attention = [](int64_t C, bool gelu) {
    const int64_t hidden = gelu ? 4 * C : ((8 * C / 3 + 63) / 64) * 64;
    return 2 * C + 3 * C * C + C * C + (gelu ? 2 : 3) * C * hidden;  // 2 norms, qkv, proj, MLP
  };
  auto mamba = [](int64_t C) {
    const int64_t D = 2 * C, N = 16, K = 4, R = (C + 15) / 16;
    // norm, in_proj, conv weight + bias, x_proj, dt_proj weight + bias, A_log, D, out_proj
    return C + C * 2 * D + D * K + D + D * (R + 2 * N) + R * D + D + D * N + D + D * C;
  };
  const std::map<std::string, int64_t> expect = {
      {"gpt-small", V * 768 + 12 * attention(768, true) + 768},
      {"gpt-medium", V * 1024 + 24 * attention(1024, true) + 1024},
      {"mamba-small", V * 768 + 24 * mamba(768) + 768},
      {"mamba-medium", V * 1024 + 48 * mamba(1024) + 1024},
      {"jamba-small", V * 768 + 14 * mamba(768) + 2 * attention(768, false) + 768},
      {"mamba2-small", 128965824},  // counted in plugins/mamba2/test_mamba2.cpp
  };
  // The published sizes these shapes are known by (GPT-2 124M has learned positions and biases we lack).
  CHECK(expect.at("gpt-small") == 123551232);
  CHECK(expect.at("mamba-small") == 129117696);   // Mamba-130M
  CHECK(expect.at("mamba-medium") == 371492864);  // Mamba-370M
  auto names = preset_names();
  CHECK(names.size() == expect.size());
  for (const auto& name : names) {
    INFO("preset " << name);
    REQUIRE(expect.count(name) == 1);
    Experiment e = parse("data: {path: \"builtin:arithmetic\"}\n", host, {"model.preset=" + name});
    const ModelConfig cfg = e.model_config(17);
    if (name.find("medium") == std::string::npos) {  // the whole model, as a run counts it
      CHECK(LMModel(cfg, host.registry()).num_parameters() == expect.at(name));
    } else {  // 350M+ parameters: count one block per kind instead of building the whole model
      std::map<std::string, int64_t> per_kind;
      int64_t n = cfg.dims.vocab_size * cfg.dims.hidden_size + cfg.dims.hidden_size;  // tied embedding, final norm
      for (const auto& kind : cfg.layer_kinds()) {
        if (!per_kind.count(kind)) {
          auto b = host.registry().make_block(kind, cfg.dims, cfg.block_params.at(kind), 0);
          per_kind[kind] = 0;
          for (const auto& p : b->parameters()) per_kind[kind] += p.numel();
        }
        n += per_kind[kind];
      }
      CHECK(n == expect.at(name));
    }
  }
  // Fields in the file override the preset.
  Experiment e = parse("data: {path: \"builtin:arithmetic\"}\nmodel: {preset: mamba-small, n_layer: 2}\n", host);
  CHECK(e.model_config(17).dims.n_layer == 2);
  CHECK(LMModel(e.model_config(17), host.registry()).num_parameters() == V * 768 + 2 * mamba(768) + 768);
}

// ---- end to end (block_contract.h's check_learns_shakespeare) ---------------------------------

TEST_CASE("a small char mamba learns tiny Shakespeare (val loss 0.5 nats under the unigram entropy)", "[mamba][e2e]") {
  check_learns_shakespeare("model: {hidden_size: 64, n_layer: 2, max_seq_len: 64, block_pattern: [mamba]}");
}

TEST_CASE("a small char hybrid of mamba and attention blocks learns tiny Shakespeare", "[mamba][e2e]") {
  check_learns_shakespeare(
      "model: {hidden_size: 64, n_layer: 3, max_seq_len: 64, block_pattern: [mamba, mamba, attention], "
      "blocks: {attention: {n_head: 4}}}");
}
