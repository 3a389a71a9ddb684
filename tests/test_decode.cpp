// The decoding engine on the CPU: device-side sampling (seeded, repeatable, the right distribution,
// top-k / top-p), the static decoding path == the eager one for attention, mamba, mla and a hybrid,
// and the host's every-k-steps checks giving what a check per token gives.
#include <map>
#include <set>

#include "block_contract.h"
#include "catch.h"
#include "linearnexus/host/generator.h"

using namespace linearnexus;
using namespace lntest;

namespace {
at::Tensor scalar_long(int64_t v) { return at::full({1}, v, at::kLong); }

const char* kBlocks = "{attention: {n_head: 4}, mamba: {d_state: 8}, mla: {n_head: 4}}";

}  // namespace

TEST_CASE("sample_tokens: greedy is the argmax, a seed and a counter fix the draw", "[decode]") {
  torch::manual_seed(0);
  auto logits = torch::randn({6, 50});
  SamplingParams greedy;
  greedy.temperature = 0;
  CHECK(at::equal(sample_tokens(logits, greedy, scalar_long(1), scalar_long(0)), logits.argmax(-1)));
  SamplingParams sp;
  sp.temperature = 1.0;
  auto a = sample_tokens(logits, sp, scalar_long(5), scalar_long(3));
  CHECK(at::equal(a, sample_tokens(logits, sp, scalar_long(5), scalar_long(3))));
  // Another counter (the next step) or another seed draws other tokens for some row.
  int64_t differ = 0;
  for (int64_t c = 4; c < 12; ++c) differ += !at::equal(a, sample_tokens(logits, sp, scalar_long(5), scalar_long(c)));
  CHECK(differ >= 6);
  CHECK(!at::equal(a, sample_tokens(logits, sp, scalar_long(6), scalar_long(3))));
}

TEST_CASE("sample_tokens draws each token with its probability, and top-k / top-p cut the tail", "[decode]") {
  const std::vector<double> probs{0.1, 0.2, 0.3, 0.4};
  const int64_t rows = 20000;
  auto logits = at::tensor(probs, at::kDouble).log().to(at::kFloat).unsqueeze(0).expand({rows, 4}).contiguous();
  SamplingParams sp;
  auto counts = at::bincount(sample_tokens(logits, sp, scalar_long(1), scalar_long(0)), {}, 4);
  for (int64_t v = 0; v < 4; ++v) {
    INFO("token " << v << " drawn " << counts[v].item<int64_t>() << " times of " << rows);
    CHECK(std::abs(counts[v].item<double>() / rows - probs[v]) < 0.015);
  }
  sp.top_k = 2;  // tokens 2 and 3 only, renormalised: 3/7 and 4/7
  counts = at::bincount(sample_tokens(logits, sp, scalar_long(2), scalar_long(0)), {}, 4);
  CHECK(counts[0].item<int64_t>() + counts[1].item<int64_t>() == 0);
  CHECK(std::abs(counts[3].item<double>() / rows - 4.0 / 7.0) < 0.015);
  sp.top_k = 0;
  sp.top_p = 0.5;  // 0.4 then 0.3 reach 0.5: tokens 3 and 2
  counts = at::bincount(sample_tokens(logits, sp, scalar_long(3), scalar_long(0)), {}, 4);
  CHECK(counts[0].item<int64_t>() + counts[1].item<int64_t>() == 0);
  CHECK(counts[2].item<int64_t>() > 0);
  sp.top_p = 0.0;  // the most likely token alone
  CHECK((sample_tokens(logits, sp, scalar_long(4), scalar_long(0)) == 3).all().item<bool>());
}

TEST_CASE("the static decoding path draws the eager path's tokens (attention, mamba, mla, hybrid)", "[decode]") {
  PluginHost host;
  for (const std::string pattern : {"[attention]", "[mamba]", "[mla]", "[mamba, attention]"}) {
    INFO("block_pattern " << pattern);
    auto m = contract_model(host, pattern, kBlocks);
    DecodeGenerator generator(*m, host.registry());
    CHECK(generator.blocks_not_graph_safe().empty());
    check_static_decoding(*m, padded_prompts(), 14);
    SamplingParams greedy;
    greedy.temperature = 0;
    greedy.max_new_tokens = 4;
    generator.generate(padded_prompts(), greedy);
    CHECK(!generator.last_call_graphed());  // no CUDA graphs on the CPU
  }
}

// The generator is the caller's and works on a replica whose tensors are the model's: the model is
// never modified (its mode, its weights' identity), and a weight changed in place between two calls
// (an optimizer step) is what the next call decodes with.
TEST_CASE("a generator leaves its model as it was and sees the model's new weights", "[decode]") {
  PluginHost host;
  auto m = contract_model(host, "[mamba, attention]", kBlocks);
  {
    torch::NoGradGuard g;  // undo contract_model's large embeddings: tokens then depend on the blocks
    for (auto& kv : m->named_parameters())
      if (kv.key() == "wte.weight") kv.value().div_(50.0);
  }
  m->train();
  std::map<std::string, at::Tensor> before;
  for (const auto& kv : m->named_parameters()) before[kv.key()] = kv.value();
  SamplingParams greedy;
  greedy.temperature = 0;
  greedy.max_new_tokens = 12;
  DecodeGenerator generator(*m, host.registry());
  const GeneratedBatch first = generator.generate(padded_prompts(), greedy);
  CHECK(m->is_training());
  for (const auto& kv : m->named_parameters()) CHECK(kv.value().is_same(before.at(kv.key())));
  {
    torch::NoGradGuard g;  // updates in place, as an optimizer step makes
    torch::manual_seed(5);
    for (auto& kv : m->named_parameters())
      if (kv.key().rfind("blocks.", 0) == 0) kv.value().add_(torch::randn_like(kv.value()) * 0.5);
  }
  const GeneratedBatch second = generator.generate(padded_prompts(), greedy);
  CHECK(second.completions != first.completions);
  DecodeGenerator fresh(*m, host.registry());
  CHECK(fresh.generate(padded_prompts(), greedy).completions == second.completions);
}

TEST_CASE("checking the tokens every k steps gives what checking every step gives", "[decode]") {
  PluginHost host;
  auto m = contract_model(host, "[mamba, attention]", kBlocks);
  SamplingParams sp;
  sp.temperature = 100;  // near uniform over the 20 tokens: rows stop at different steps
  sp.max_new_tokens = 20;
  sp.seed = 9;
  sp.eos_id = 5;
  sp.stop_sequences = {{2, 3}};
  auto run = [&](int64_t every) {
    DecodeOptions options;
    options.sync_every = every;
    std::vector<std::pair<int64_t, int64_t>> seen;
    GeneratedBatch b = generate_batch(
        *m, padded_prompts(), sp, 3,
        [&](int64_t r, int64_t t) {
          seen.emplace_back(r, t);
          return !(r == 4 && seen.size() > 30);  // the callback stops row 4 part way
        },
        options);
    return std::make_pair(b, seen);
  };
  auto [one, seen_one] = run(1);
  auto [five, seen_five] = run(5);
  CHECK(seen_one == seen_five);
  CHECK(one.completions == five.completions);
  CHECK(one.stopped == five.stopped);
  CHECK(at::equal(one.tokens, five.tokens));
  CHECK(at::equal(one.mask, five.mask));
  CHECK(at::allclose(one.logprobs, five.logprobs));
  int64_t stopped = 0;
  for (bool s : one.stopped) stopped += s;
  CHECK(stopped > 0);
  CHECK(one.completions[4].size() < 20);
  // The same call again (the engine reuses its caches): the same tokens.
  CHECK(run(1).first.completions == one.completions);
}

// `linearnexus serve` batches requests that carry their own seeds: each row of generate_seeded must
// draw what a one-row call with its seed draws (padded to the batch's longest prompt or not).
TEST_CASE("generate_seeded: each row draws what a call of its own with its seed draws", "[decode]") {
  PluginHost host;
  for (const std::string pattern : {"[attention]", "[mamba, attention]"}) {
    INFO("block_pattern " << pattern);
    auto m = contract_model(host, pattern, kBlocks);
    SamplingParams sp;
    sp.temperature = 3;  // flat enough that different seeds draw different tokens
    sp.top_k = 15;
    sp.max_new_tokens = 10;
    const auto prompts = padded_prompts();
    std::vector<uint64_t> seeds;
    for (size_t i = 0; i < prompts.size(); ++i) seeds.push_back(100 + i % 2);  // two rows share each seed
    DecodeGenerator generator(*m, host.registry());
    const GeneratedBatch batch = generator.generate_seeded(prompts, sp, seeds);
    std::set<std::vector<int64_t>> distinct;
    for (size_t i = 0; i < prompts.size(); ++i) {
      SamplingParams alone = sp;
      alone.seed = seeds[i];
      CHECK(generator.generate(prompts[i], alone) == batch.completions[i]);
      distinct.insert(batch.completions[i]);
    }
    CHECK(distinct.size() > 1);
    CHECK_CONTAINS(error_of([&] { generator.generate_seeded(prompts, sp, {1}); }), "1 seeds for 4 prompts");
  }
}
