// The decode engine on CUDA: the step captured in a CUDA graph and replayed draws what the eager
// step draws (fp32: the same tokens, greedy and seeded sampling, for attention, mamba, mla, the
// other recurrent blocks (gla, mamba2, the deltanets, kda, rwkv7) and hybrids; bf16: the same
// log-probs up to the first near-tie), left-padded batches equal prompts one by one, and the bf16
// inference weights follow in-place weight updates.
// CTest label `gpu`: without CUDA every case skips and says so.
#include "block_contract.h"
#include "catch.h"
#include "linearnexus/host/decode_stream.h"
#include "linearnexus/host/generator.h"

using namespace linearnexus;
using namespace lntest;

namespace {
bool have_cuda() { return at::hasCUDA(); }

const char* kBlocks =
    "{attention: {n_head: 4}, swa: {n_head: 4, window: 5}, mamba: {d_state: 8}, mla: {n_head: 4}, "
    "gla: {chunk_size: 4}, mamba2: {d_state: 8, head_dim: 8, chunk_size: 4}, deltanet: {chunk_size: 4}, "
    "gated_deltanet: {chunk_size: 4}, kda: {chunk_size: 4}, rwkv7: {chunk_size: 4}}";

std::shared_ptr<LMModel> cuda_model(PluginHost& host, const std::string& pattern, at::ScalarType dtype) {
  auto m = contract_model(host, pattern, kBlocks);
  m->to(at::kCUDA);
  m->set_compute_dtype(dtype);
  return m;
}

// One generator per model, kept across calls as its owner would (slots and captured graphs reused).
GeneratedBatch run(DecodeGenerator& gen, const std::string& step, const SamplingParams& sp, int64_t group = 2) {
  gen.options.step = step;
  GeneratedBatch b = gen.generate(padded_prompts(), sp, group);
  if (step == "auto") CHECK(gen.last_call_graphed());
  gen.options.step = "auto";
  return b;
}
}  // namespace

TEST_CASE("fp32: the graphed step draws the eager step's tokens and log-probs, every block", "[decode][gpu]") {
  if (!have_cuda()) LN_SKIP("no CUDA device in this LibTorch/machine");
  PluginHost host;
  for (const std::string pattern :
       {"[attention]", "[mamba]", "[mla]", "[mamba, attention]", "[swa, attention]", "[gla]", "[mamba2]", "[deltanet]",
        "[gated_deltanet]", "[kda]", "[rwkv7]", "[rwkv7, attention]", "[mla, mamba]"}) {
    INFO("block_pattern " << pattern);
    auto m = cuda_model(host, pattern, at::kFloat);
    DecodeGenerator gen(*m, host.registry());
    SamplingParams greedy, sampled;
    greedy.temperature = 0;
    greedy.max_new_tokens = sampled.max_new_tokens = 20;
    sampled.temperature = 0.9;
    sampled.top_p = 0.95;
    sampled.seed = 3;
    sampled.stop_sequences = {{3}};
    for (const auto& sp : {greedy, sampled}) {
      INFO("temperature " << sp.temperature);
      GeneratedBatch e = run(gen, "eager", sp), g = run(gen, "auto", sp);
      CHECK(g.completions == e.completions);
      CHECK(g.stopped == e.stopped);
      REQUIRE(g.logprobs.sizes() == e.logprobs.sizes());
      CHECK((g.logprobs - e.logprobs).abs().max().item<double>() < 1e-4);
      CHECK(run(gen, "auto", sp).completions == g.completions);  // replayed again: the same draw
    }
    // Left-padded prompts in one graphed batch == each prompt alone.
    GeneratedBatch b = run(gen, "auto", greedy, 1);
    for (size_t i = 0; i < padded_prompts().size(); ++i)
      CHECK(b.completions[i] == generate(*m, padded_prompts()[i], greedy));
  }
}

// Continuous batching (decode_stream.h) with the step captured once: rows that join and leave the
// running batch (the graph never rebuilt) draw what each draws alone, in fp32.
TEST_CASE("fp32: continuous batching on the graphed step, rows joining mid-batch, each as alone", "[decode][gpu]") {
  if (!have_cuda()) LN_SKIP("no CUDA device in this LibTorch/machine");
  PluginHost host;
  for (const std::string pattern : {"[attention]", "[mamba]", "[mla]", "[swa, attention]", "[gla]", "[mamba2]",
                                    "[deltanet]", "[gated_deltanet]", "[kda]", "[rwkv7]"}) {
    INFO("block_pattern " << pattern);
    auto m = cuda_model(host, pattern, at::kFloat);
    DecodeGenerator gen(*m, host.registry(), DecodeOptions{"auto", 4});
    SamplingParams sp;
    sp.temperature = 0.9;
    DecodeStream stream(gen, 3, sp);
    CHECK(stream.graphed());
    std::vector<StreamRequest> waiting;
    const auto prompts = padded_prompts();
    for (int64_t i = 0; i < 8; ++i) {
      StreamRequest r;
      r.id = i;
      r.prompt = prompts[static_cast<size_t>(i) % prompts.size()];
      r.seed = 10 + static_cast<uint64_t>(i);
      r.max_new_tokens = 3 + 5 * (i % 3);
      waiting.push_back(r);
    }
    const auto requests = waiting;
    std::map<int64_t, std::vector<int64_t>> got;
    int64_t joined_running = 0;
    for (int guard = 0; guard < 500 && (!waiting.empty() || !stream.idle()); ++guard) {
      const bool running = !stream.idle();
      const int64_t n = stream.admit(waiting);
      if (running) joined_running += n;
      waiting.erase(waiting.begin(), waiting.begin() + n);
      for (const auto& t : stream.advance()) got[t.id].push_back(t.token);
    }
    CHECK(joined_running > 0);
    for (const auto& r : requests) {
      SamplingParams alone = sp;
      alone.max_new_tokens = r.max_new_tokens;
      CHECK(got[r.id] == gen.generate_seeded({r.prompt}, alone, {r.seed}).completions[0]);
    }
  }
}

TEST_CASE("bf16: the graphed step's log-probs agree with the eager step's up to the first near-tie", "[decode][gpu]") {
  if (!have_cuda()) LN_SKIP("no CUDA device in this LibTorch/machine");
  PluginHost host;
  for (const std::string pattern : {"[attention]", "[mamba]", "[mla]", "[mamba, attention]", "[kda]", "[rwkv7]"}) {
    INFO("block_pattern " << pattern);
    auto m = cuda_model(host, pattern, at::kBFloat16);
    DecodeGenerator gen(*m, host.registry());
    SamplingParams greedy;
    greedy.temperature = 0;
    greedy.max_new_tokens = 16;
    GeneratedBatch e = run(gen, "eager", greedy), g = run(gen, "auto", greedy);
    for (size_t r = 0; r < e.completions.size(); ++r) {
      size_t same = 0;
      while (same < e.completions[r].size() && same < g.completions[r].size() &&
             e.completions[r][same] == g.completions[r][same])
        ++same;
      INFO("row " << r << ": the first " << same << " tokens agree");
      CHECK(same >= 8);
      for (size_t c = 0; c < same; ++c)
        CHECK(std::abs(e.logprobs[r][c].item<double>() - g.logprobs[r][c].item<double>()) < 0.05);
    }
  }
}

TEST_CASE("the graphed step decodes with the weights as they are now (an in-place update is seen)", "[decode][gpu]") {
  if (!have_cuda()) LN_SKIP("no CUDA device in this LibTorch/machine");
  PluginHost host;
  auto m = cuda_model(host, "[mamba, attention]", at::kBFloat16);
  DecodeGenerator gen(*m, host.registry());
  SamplingParams greedy;
  greedy.temperature = 0;
  greedy.max_new_tokens = 12;
  GeneratedBatch before = run(gen, "auto", greedy);
  {
    torch::NoGradGuard g;  // as an optimizer step would: every weight changes in place
    torch::manual_seed(1);
    for (auto& p : m->parameters()) p.add_(torch::randn_like(p) * 0.5);
  }
  GeneratedBatch e = run(gen, "eager", greedy), g = run(gen, "auto", greedy);
  CHECK(g.completions != before.completions);
  for (size_t r = 0; r < e.completions.size(); ++r)
    CHECK(std::abs(e.logprobs[r][0].item<double>() - g.logprobs[r][0].item<double>()) < 0.05);
  CHECK(g.completions[0].front() == e.completions[0].front());
}
