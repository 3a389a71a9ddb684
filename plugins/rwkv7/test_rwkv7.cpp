// The rwkv7 block against the state / cache contract (tests/block_contract.h): chunked == recurrent
// (outputs, gradients), prefill + decode at every split (token shifts included), T = 4096 with the
// strongest decays RWKV-7 allows, a fixed-size state, batched left-padded and hybrid generation, bad
// configs, and tiny Shakespeare.
#include "block_contract.h"

using namespace lntest;

namespace {
// The reference init leaves the LoRA down-projections and the bonus gain at zero (their partners get
// no gradient there): non-zero, so the comparison covers every path.
const std::map<std::string, double> kTweak{{"w1", 0.05}, {"a1", 0.05}, {"g1", 0.05}, {"r_k", 0.3}};
}  // namespace

TEST_CASE("rwkv7: chunked form == recurrent reference in outputs and every gradient (odd T, chunk sizes)", "[rwkv7]") {
  PluginHost host;
  // 37 = 4 chunks of 8 + 5; 5 < one chunk; chunk 3 cuts everywhere else; chunk 1 makes 37 chunks, more
  // than core's loop takes on the CPU, so the chunks' states come from the scan.
  for (const std::string chunk : {"8", "3", "1"})
    check_chunked_matches_recurrent(host, "rwkv7", {{"n_head", "2"}, {"chunk_size", chunk}}, 16, {37, 5},
                                    Reference{"recurrent", kTweak});
}

TEST_CASE("rwkv7: prefill of any prefix + decode of the rest == the training form", "[rwkv7]") {
  PluginHost host;
  check_prefill_decode_every_split(host, "rwkv7", {{"n_head", "2"}, {"chunk_size", "4"}}, 16, 13);
}

TEST_CASE("rwkv7: T = 4096 with the strongest decays stays finite and matches the reference", "[rwkv7]") {
  PluginHost host;
  // w0 = 20: log w = -exp(-softplus(-20) - 0.5) ~ -0.61 per step and channel, -2500 over the
  // sequence; a0 = 5: the learning rate ~ 1 (the removal is a full projection).
  auto strong = kTweak;
  strong["w0"] = 20.0;
  strong["a0"] = 5.0;
  check_long_sequence(host, "rwkv7", {{"n_head", "2"}}, 8, Reference{"recurrent", strong});
}

TEST_CASE("rwkv7: the state is fixed-size per sequence, roles declared, bad configs are clear errors", "[rwkv7]") {
  PluginHost host;
  check_state_size_fixed(host, "rwkv7", {{"n_head", "2"}}, 16);
  check_roles_declared(host, "rwkv7", {{"n_head", "2"}}, 16,
                       {"tm_lerp", "cm_lerp", "w0", "w1", "w2", "a0", "a1", "a2", "g1", "g2", "k_k", "k_a", "r_k"});
  auto e = error_of([&] { make_test_block(host, "rwkv7", 16, {{"n_head", "3"}}); });
  CHECK_CONTAINS(e, "model.blocks.rwkv7.n_head (3) must divide hidden_size (16)");
  e = error_of([&] {
    parse("data: {path: \"builtin:arithmetic\"}\nmodel: {block_pattern: [rwkv7], blocks: {rwkv7: {chunk_size: 0}}}\n",
          host);
  });
  CHECK_CONTAINS(e, "chunk_size");
}

TEST_CASE("rwkv7: batched left-padded generation == one by one, hybrid with attention decodes like its forward",
          "[rwkv7]") {
  PluginHost host;
  for (const std::string pattern : {"[rwkv7]", "[rwkv7, rwkv7, attention]"})
    check_generation(host, pattern, "{rwkv7: {chunk_size: 4, n_head: 2}, attention: {n_head: 4}}");
  // It opts in to the CUDA-graph-captured step (tests/test_decode_gpu.cpp replays it on a GPU); the
  // static path check_generation ran above is the one a graph captures.
  CHECK(make_test_block(host, "rwkv7", 16, {{"n_head", "2"}})->graph_safe_decode());
}

TEST_CASE("a small char rwkv7 model learns tiny Shakespeare (val loss 0.5 nats under the unigram entropy)",
          "[rwkv7][e2e]") {
  check_learns_shakespeare("model: {hidden_size: 64, n_layer: 2, max_seq_len: 64, block_pattern: [rwkv7]}");
}
