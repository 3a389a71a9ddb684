// The deltanet, gated_deltanet and kda blocks against the state / cache contract (tests/block_contract.h):
// chunked (WY; kda: the generalised delta rule) == recurrent (outputs, gradients), prefill + decode
// at every split, T = 4096 (strong decays for the gated ones), a fixed-size state, batched left-padded and hybrid generation, bad
// configs, and tiny Shakespeare.
#include <cmath>

#include "block_contract.h"

using namespace lntest;

namespace {
const std::map<std::string, std::map<std::string, double>> kTweak{
    {"deltanet", {}},
    {"gated_deltanet", {{"A_log", 0.0}, {"dt_bias", 0.0}}},  // gated: decays ~ 0.5
    {"kda", {{"A_log", 0.0}, {"dt_bias", 0.0}}}};
}

TEST_CASE("deltanet: chunked WY form == recurrent reference in outputs and every gradient (odd T, chunk sizes)",
          "[deltanet]") {
  PluginHost host;
  for (const std::string name : {"deltanet", "gated_deltanet", "kda"})
    for (const std::string chunk : {"8", "3", "1"})  // 1: 37 chunks, the states from core's scan over chunks
      for (const std::string conv : {"true", "false"})
        check_chunked_matches_recurrent(host, name, {{"n_head", "2"}, {"chunk_size", chunk}, {"short_conv", conv}}, 16,
                                        {37, 5}, Reference{"recurrent", kTweak.at(name)});
}

TEST_CASE("deltanet: prefill of any prefix + decode of the rest == the training form", "[deltanet]") {
  PluginHost host;
  for (const std::string name : {"deltanet", "gated_deltanet", "kda"})
    check_prefill_decode_every_split(host, name, {{"n_head", "2"}, {"chunk_size", "4"}}, 16, 13);
}

TEST_CASE("deltanet: T = 4096 stays finite and matches the reference (strong decays when gated)", "[deltanet]") {
  PluginHost host;
  check_long_sequence(host, "deltanet", {{"n_head", "2"}}, 8, {});
  // A = 16, softplus(5) ~ 5: log-decays of ~ -80 per step.
  check_long_sequence(host, "gated_deltanet", {{"n_head", "2"}}, 8,
                      Reference{"recurrent", {{"A_log", std::log(16.0)}, {"dt_bias", 5.0}}});
  check_long_sequence(host, "kda", {{"n_head", "2"}}, 8,
                      Reference{"recurrent", {{"A_log", std::log(16.0)}, {"dt_bias", 5.0}}});
}

TEST_CASE("deltanet: the state is fixed-size per sequence, roles declared, bad configs are clear errors",
          "[deltanet]") {
  PluginHost host;
  for (const std::string name : {"deltanet", "gated_deltanet", "kda"}) {
    check_state_size_fixed(host, name, {{"n_head", "2"}}, 16);
    check_roles_declared(host, name, {{"n_head", "2"}}, 16, {"ba.weight", "conv_weight"});
    auto e = error_of([&] { make_test_block(host, name, 16, {{"n_head", "3"}}); });
    CHECK_CONTAINS(e, "model.blocks." + name + ".n_head (3) must divide hidden_size (16)");
  }
  check_roles_declared(host, "gated_deltanet", {}, 16, {"A_log", "dt_bias"});
  check_roles_declared(host, "kda", {}, 16, {"A_log", "dt_bias", "f1.weight", "f2.weight"});
  auto e = error_of([&] {
    parse(
        "data: {path: \"builtin:arithmetic\"}\nmodel: {block_pattern: [deltanet], blocks: {deltanet: {conv_size: 1}}}\n",
        host);
  });
  CHECK_CONTAINS(e, "conv_size");
}

TEST_CASE("deltanet: batched left-padded generation == one by one, hybrid with attention decodes like its forward",
          "[deltanet]") {
  PluginHost host;
  for (const std::string pattern : {"[deltanet]", "[gated_deltanet]", "[kda]", "[gated_deltanet, deltanet, attention]"})
    check_generation(
        host, pattern,
        "{deltanet: {chunk_size: 4}, gated_deltanet: {chunk_size: 4}, kda: {chunk_size: 4}, attention: {n_head: 4}}");
  // All three opt in to the CUDA-graph-captured step (tests/test_decode_gpu.cpp replays each on a GPU).
  for (const std::string name : {"deltanet", "gated_deltanet", "kda"}) {
    INFO(name);
    CHECK(make_test_block(host, name, 16, {{"n_head", "2"}})->graph_safe_decode());
  }
}

TEST_CASE("a small char deltanet model learns tiny Shakespeare (val loss 0.5 nats under the unigram entropy)",
          "[deltanet][e2e]") {
  check_learns_shakespeare("model: {hidden_size: 64, n_layer: 2, max_seq_len: 64, block_pattern: [deltanet]}");
}

TEST_CASE("a small char gated_deltanet model learns tiny Shakespeare (val loss 0.5 nats under the unigram entropy)",
          "[deltanet][e2e]") {
  check_learns_shakespeare("model: {hidden_size: 64, n_layer: 2, max_seq_len: 64, block_pattern: [gated_deltanet]}");
}

TEST_CASE("a small char kda model learns tiny Shakespeare (val loss 0.5 nats under the unigram entropy)",
          "[deltanet][e2e]") {
  check_learns_shakespeare(
      "model: {hidden_size: 64, n_layer: 2, max_seq_len: 64, block_pattern: [kda], blocks: {kda: {chunk_size: 16}}}");
}
