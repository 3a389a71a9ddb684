// The attention block: causality, cached decoding == full forward, GQA == MHA with repeated heads.
#include "catch.h"
#include "linearnexus/model.h"
#include "linearnexus/plugin_host.h"
#include "test_util.h"

using namespace linearnexus;

namespace {

std::shared_ptr<LMModel> make_model(PluginHost& host, int64_t n_head, int64_t n_kv_head, int64_t n_layer = 2) {
  Experiment e = lntest::parse(R"(
data: {path: "builtin:arithmetic"}
model: {hidden_size: 32, n_layer: 2, max_seq_len: 64, block_pattern: [attention]}
)", host, {"model.blocks.attention.n_head=" + std::to_string(n_head),
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
    auto rep = [&](const at::Tensor& w) { return w.view({Hkv, D, -1}).repeat_interleave(H / Hkv, 0).reshape({H * D, -1}); };
    kv.value().copy_(at::cat({q, rep(k), rep(v)}, 0));
  }
  auto idx = torch::randint(0, 17, {2, 16}, at::kLong);
  CHECK(torch::allclose(gqa->forward(idx), mha->forward(idx), 1e-5, 1e-5));
  // The GQA cache holds half the keys/values.
  CHECK(gqa->init_state(1, 64).bytes() * 2 == mha->init_state(1, 64).bytes());
}
