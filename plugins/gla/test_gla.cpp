// The gla block against the state / cache contract (tests/block_contract.h): chunked == recurrent
// (outputs, gradients), prefill + decode at every split, T = 4096 with strong decays, a fixed-size
// state, batched left-padded and hybrid generation, bad configs, and tiny Shakespeare.
#include "block_contract.h"

using namespace lntest;

TEST_CASE("gla: chunked form == recurrent reference in outputs and every gradient (odd T, chunk sizes)", "[gla]") {
  PluginHost host;
  // 37 = 4 chunks of 8 + 5; 5 < one chunk; chunk 3 cuts everywhere else; chunk 1 makes 37 chunks, more
  // than core's loop takes on the CPU, so the chunks' states come from the scan. Bias -1: decays ~ 0.7..0.95.
  for (const std::string chunk : {"8", "3", "1"})
    check_chunked_matches_recurrent(host, "gla", {{"n_head", "2"}, {"chunk_size", chunk}, {"gate_normalizer", "4"}}, 16,
                                    {37, 5}, Reference{"recurrent", {{"gk2.bias", -1.0}}});
}

TEST_CASE("gla: prefill of any prefix + decode of the rest == the training form", "[gla]") {
  PluginHost host;
  check_prefill_decode_every_split(host, "gla", {{"n_head", "2"}, {"chunk_size", "4"}}, 16, 13);
}

TEST_CASE("gla: T = 4096 with strong decays stays finite and matches the reference", "[gla]") {
  PluginHost host;
  // log alpha ~ logsigmoid(-6) = -6 per step and channel: -96 over a chunk, -24000 over the sequence.
  check_long_sequence(host, "gla", {{"n_head", "2"}, {"gate_normalizer", "1"}}, 8,
                      Reference{"recurrent", {{"gk2.bias", -6.0}}});
}

TEST_CASE("gla: the state is fixed-size per sequence, roles declared, bad configs are clear errors", "[gla]") {
  PluginHost host;
  check_state_size_fixed(host, "gla", {{"n_head", "2"}}, 16);
  check_roles_declared(host, "gla", {{"n_head", "2"}}, 16, {"gk1.weight", "gk2.weight", "gk2.bias"});
  auto e = error_of([&] { make_test_block(host, "gla", 16, {{"n_head", "3"}}); });
  CHECK_CONTAINS(e, "model.blocks.gla.n_head (3) must divide hidden_size (16)");
  e = error_of([&] {
    parse("data: {path: \"builtin:arithmetic\"}\nmodel: {block_pattern: [gla], blocks: {gla: {chunk_size: 0}}}\n",
          host);
  });
  CHECK_CONTAINS(e, "chunk_size");
}

TEST_CASE("gla: batched left-padded generation == one by one, hybrid with attention decodes like its forward",
          "[gla]") {
  PluginHost host;
  for (const std::string pattern : {"[gla]", "[gla, gla, attention]"})
    check_generation(host, pattern, "{gla: {chunk_size: 4}, attention: {n_head: 4}}");
}

TEST_CASE("a small char gla model learns tiny Shakespeare (val loss 0.5 nats under the unigram entropy)",
          "[gla][e2e]") {
  check_learns_shakespeare("model: {hidden_size: 64, n_layer: 2, max_seq_len: 64, block_pattern: [gla]}");
}
