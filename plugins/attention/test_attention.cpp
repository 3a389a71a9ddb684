// The attention block: causality, cached decoding == full forward, GQA == MHA with repeated heads;
// sliding windows (window: N / the swa block): locality, the ring-buffer cache == the windowed forward.
#include "block_contract.h"
#include "catch.h"
#include "linearnexus/model.h"
#include "linearnexus/host/plugin_host.h"
#include "test_util.h"

using namespace linearnexus;

namespace {

std::shared_ptr<LMModel> make_model(PluginHost& host, int64_t n_head, int64_t n_kv_head, int64_t n_layer = 2) {
  Experiment e = lntest::parse(
      R"(
data: {path: "builtin:arithmetic"}
model: {hidden_size: 32, n_layer: 2, max_seq_len: 64, block_pattern: [attention]}
)",
      host,
      {"model.blocks.attention.n_head=" + std::to_string(n_head),
       "model.blocks.attention.n_kv_head=" + std::to_string(n_kv_head), "model.n_layer=" + std::to_string(n_layer)});
  auto m = std::make_shared<LMModel>(e.model_config(17), host.registry());
  m->eval();
  return m;
}

// Cached decoding: prefill `prefill` tokens, then one token at a time; logits [B, T, V].
at::Tensor cached_logits(LMModel& m, const at::Tensor& idx, int64_t prefill) {
  ModelState s = m.init_state(idx.size(0), idx.size(1));
  std::vector<at::Tensor> parts{m.forward(idx.narrow(1, 0, prefill), &s, Mode::Prefill)};
  for (int64_t t = prefill; t < idx.size(1); ++t) parts.push_back(m.forward(idx.narrow(1, t, 1), &s, Mode::Decode));
  return at::cat(parts, 1);
}

}  // namespace

TEST_CASE("attention is causal: outputs at t ignore tokens after t", "[attention]") {
  PluginHost host;
  torch::manual_seed(0);
  auto m = make_model(host, 4, 4);
  torch::NoGradGuard g;
  auto idx = torch::randint(0, 17, {2, 20}, at::kLong);
  auto changed = idx.clone();
  changed.narrow(1, 12, 8).random_(0, 17);
  auto a = m->forward(idx), b = m->forward(changed);
  CHECK(torch::allclose(a.narrow(1, 0, 12), b.narrow(1, 0, 12), 1e-6, 1e-6));
  CHECK_FALSE(torch::allclose(a.narrow(1, 12, 8), b.narrow(1, 12, 8), 1e-3, 1e-3));
}

TEST_CASE("cached decoding equals the full forward (MHA, GQA, MQA)", "[attention]") {
  PluginHost host;
  for (auto [h, kv] : std::vector<std::pair<int, int>>{{4, 4}, {4, 2}, {4, 1}}) {
    torch::manual_seed(1);
    auto m = make_model(host, h, kv);
    torch::NoGradGuard g;
    auto idx = torch::randint(0, 17, {3, 24}, at::kLong);
    auto full = m->forward(idx);
    auto cached = cached_logits(*m, idx, 5);
    INFO("n_head " << h << " n_kv_head " << kv << " max diff " << (full - cached).abs().max().item<double>());
    CHECK(torch::allclose(cached, full, 1e-5, 1e-5));
  }
}

TEST_CASE("GQA equals MHA whose key/value heads are repeated", "[attention]") {
  PluginHost host;
  torch::manual_seed(2);
  auto gqa = make_model(host, 4, 2, 1), mha = make_model(host, 4, 4, 1);
  torch::NoGradGuard g;
  // Copy every weight; MHA's k and v rows are GQA's, each kv head repeated n_head / n_kv_head times.
  auto gp = gqa->named_parameters(), mp = mha->named_parameters();
  for (auto& kv : mp) {
    const auto& src = gp[kv.key()];
    if (kv.key().find("qkv.weight") == std::string::npos) {
      kv.value().copy_(src);
      continue;
    }
    const int64_t D = 8, H = 4, Hkv = 2;
    auto q = src.narrow(0, 0, H * D), k = src.narrow(0, H * D, Hkv * D), v = src.narrow(0, (H + Hkv) * D, Hkv * D);
    auto rep = [&](const at::Tensor& w) {
      return w.view({Hkv, D, -1}).repeat_interleave(H / Hkv, 0).reshape({H * D, -1});
    };
    kv.value().copy_(at::cat({q, rep(k), rep(v)}, 0));
  }
  auto idx = torch::randint(0, 17, {2, 16}, at::kLong);
  CHECK(torch::allclose(gqa->forward(idx), mha->forward(idx), 1e-5, 1e-5));
  // The GQA cache holds half the keys/values.
  CHECK(gqa->init_state(1, 64).bytes() * 2 == mha->init_state(1, 64).bytes());
}

// ---- sliding window -------------------------------------------------------------------------------

TEST_CASE("sliding window: a window covering the sequence is full attention, a short one sees only its window",
          "[attention][swa]") {
  PluginHost host;
  torch::manual_seed(7);
  auto full = lntest::make_test_block(host, "attention", 16, {{"n_head", "2"}});
  auto wide = lntest::make_test_block(host, "swa", 16, {{"n_head", "2"}, {"window", "64"}});
  auto swa = lntest::make_test_block(host, "swa", 16, {{"n_head", "2"}, {"window", "4"}});
  lntest::copy_parameters(*wide, *full);
  lntest::copy_parameters(*swa, *full);
  for (auto* b : {full.get(), wide.get(), swa.get()}) b->eval();
  torch::NoGradGuard g;
  auto x = torch::randn({2, 20, 16});
  auto y = lntest::run_block(*swa, x, {}, Mode::Train).y;
  CHECK(torch::allclose(lntest::run_block(*wide, x, {}, Mode::Train).y, lntest::run_block(*full, x, {}, Mode::Train).y,
                        1e-5, 1e-5));
  // Token t sees t-3 .. t: changing tokens 0..5 changes outputs 0..8 and none from 9 on.
  auto changed = x.clone();
  changed.narrow(1, 0, 6).normal_();
  auto yc = lntest::run_block(*swa, changed, {}, Mode::Train).y;
  CHECK(torch::allclose(y.narrow(1, 9, 11), yc.narrow(1, 9, 11), 1e-6, 1e-6));
  CHECK_FALSE(torch::allclose(y.narrow(1, 6, 3), yc.narrow(1, 6, 3), 1e-3, 1e-3));
}

TEST_CASE("sliding window: the ring-buffer cache decodes like the windowed forward, at every split",
          "[attention][swa]") {
  PluginHost host;
  // 13 tokens through a window of 4: the ring wraps three times; prefills longer than the window too.
  lntest::check_prefill_decode_every_split(host, "swa", {{"n_head", "2"}, {"window", "4"}}, 16, 13);
  lntest::check_prefill_decode_every_split(host, "attention", {{"n_head", "2"}, {"n_kv_head", "1"}, {"window", "5"}},
                                           16, 13);
  // The cache holds the window, whatever max_len or the prompt.
  lntest::check_state_size_fixed(host, "swa", {{"n_head", "2"}, {"window", "8"}}, 16);
  CHECK(lntest::make_test_block(host, "swa", 16, {{"window", "8"}})->init_state(1, 5, at::kFloat).bytes() ==
        2 * 5 * 16 * 4);
  auto e = lntest::error_of([&] {
    lntest::parse("data: {path: \"builtin:arithmetic\"}\nmodel: {block_pattern: [swa], blocks: {swa: {window: 0}}}\n",
                  host);
  });
  CHECK_CONTAINS(e, "window");
}

TEST_CASE("sliding window: [swa, swa, attention] generates left-padded batches like one by one", "[attention][swa]") {
  PluginHost host;
  lntest::check_generation(host, "[swa, swa, attention]", "{swa: {n_head: 4, window: 4}, attention: {n_head: 4}}");
}
