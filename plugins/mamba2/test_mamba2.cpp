// The mamba2 block against the state / cache contract (tests/block_contract.h): chunked == recurrent
// (outputs, gradients), prefill + decode at every split, T = 4096 with strong decays, a fixed-size
// state, batched left-padded and hybrid generation, the mamba2-small preset, bad configs, and tiny
// Shakespeare.
#include <cmath>

#include "block_contract.h"

using namespace lntest;

namespace {
// d_inner 32 in 4 heads of 8, two groups of B and C.
const KV kSmall{{"d_state", "8"}, {"head_dim", "8"}, {"n_groups", "2"}, {"chunk_size", "8"}, {"dt_max", "0.5"}};
}  // namespace

TEST_CASE("mamba2: chunked form == recurrent reference in outputs and every gradient (odd T, chunk sizes)",
          "[mamba2]") {
  PluginHost host;
  for (const std::string chunk : {"8", "3", "1"}) {  // 1: 37 chunks, the states from core's scan over chunks
    KV kv = kSmall;
    kv["chunk_size"] = chunk;
    check_chunked_matches_recurrent(host, "mamba2", kv, 16, {37, 5});
  }
}

TEST_CASE("mamba2: prefill of any prefix + decode of the rest == the training form", "[mamba2]") {
  PluginHost host;
  KV kv = kSmall;
  kv["chunk_size"] = "4";
  check_prefill_decode_every_split(host, "mamba2", kv, 16, 13);
}

TEST_CASE("mamba2: T = 4096 with strong decays stays finite and matches the reference", "[mamba2]") {
  PluginHost host;
  // dt in [1, 10] and A = -16: log-decays of -16..-160 per step, ~ -1e5 over a chunk.
  check_long_sequence(host, "mamba2", {{"d_state", "4"}, {"head_dim", "4"}, {"dt_min", "1"}, {"dt_max", "10"}}, 8,
                      Reference{"recurrent", {{"A_log", std::log(16.0)}}});
}

TEST_CASE("mamba2: the state is fixed-size per sequence, roles declared, bad configs are clear errors", "[mamba2]") {
  PluginHost host;
  check_state_size_fixed(host, "mamba2", kSmall, 16);
  check_roles_declared(host, "mamba2", kSmall, 16, {"dt_proj.weight", "dt_bias", "A_log", "D", "conv_weight"});
  auto e = error_of([&] { make_test_block(host, "mamba2", 16, {{"head_dim", "5"}}); });
  CHECK_CONTAINS(e, "model.blocks.mamba2.head_dim (5) must divide expand * hidden_size (32)");
  e = error_of([&] { make_test_block(host, "mamba2", 16, {{"head_dim", "8"}, {"n_groups", "3"}}); });
  CHECK_CONTAINS(e, "model.blocks.mamba2.n_groups (3) must divide the number of heads (4");
  e = error_of([&] { make_test_block(host, "mamba2", 16, {{"head_dim", "8"}, {"dt_min", "0.5"}, {"dt_max", "0.1"}}); });
  CHECK_CONTAINS(e, "dt_min must not exceed dt_max");
}

TEST_CASE("mamba2: batched left-padded generation == one by one, hybrid with attention decodes like its forward",
          "[mamba2]") {
  PluginHost host;
  for (const std::string pattern : {"[mamba2]", "[mamba2, mamba2, attention]"})
    check_generation(host, pattern, "{mamba2: {d_state: 8, head_dim: 8, chunk_size: 4}, attention: {n_head: 4}}");
}

TEST_CASE("mamba2-small preset: the Mamba-2 130M shape", "[mamba2][presets]") {
  PluginHost host;
  Experiment e = parse("data: {path: \"builtin:arithmetic\"}\n", host, {"model.preset=mamba2-small"});
  const ModelConfig cfg = e.model_config(17);
  CHECK(cfg.dims.n_layer == 24);
  CHECK(cfg.dims.hidden_size == 768);
  // Per layer: norm, in_proj (z, x, B, C), dt_proj, conv weight + bias, dt_bias, A_log, D, gated norm, out_proj.
  const int64_t C = 768, D = 1536, N = 128, H = 24, K = 4;
  const int64_t layer = C + C * (2 * D + 2 * N + H) + (D + 2 * N) * (K + 1) + 3 * H + D + D * C;
  auto b = host.registry().make_block("mamba2", cfg.dims, cfg.block_params.at("mamba2"), 0);
  int64_t n = 0;
  for (const auto& p : b->parameters()) n += p.numel();
  CHECK(n == layer);
  const int64_t total = 50257 * C + 24 * layer + C;  // tied embedding, 24 layers, final norm
  CHECK(total == 128965824);                         // "mamba2-130m" (its vocabulary is padded to 50280)
}

TEST_CASE("a small char mamba2 model learns tiny Shakespeare (val loss 0.5 nats under the unigram entropy)",
          "[mamba2][e2e]") {
  check_learns_shakespeare(
      "model: {hidden_size: 64, n_layer: 2, max_seq_len: 64, block_pattern: [mamba2], "
      "blocks: {mamba2: {d_state: 16, head_dim: 16}}}");
}
