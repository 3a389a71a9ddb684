// MLA vs attention at gpt-small's width: KV-cache bytes per token and decode tokens/s.
// Usage: bench_mla [n_layer [decode_tokens [context [threads]]]]   defaults: 12 64 1024 2
//
// Models: gpt-small's shape (hidden 768, 12 heads, vocab 50257 tied, swiglu MLP) with every block
// either `attention` (MHA, head_dim 64, RoPE) or `mla` with DeepSeek-like dims: kv_lora_rank 256
// (4 head_dims, DeepSeek-V2's ratio 512/128), qk_rope_head_dim 32, qk_nope_head_dim 64,
// v_head_dim 64, full-rank queries (as DeepSeek-V2-Lite). Weights are random: speed does not depend
// on them.
// For each batch size (1, 16): the prompt (context - decode_tokens tokens) is prefilled once at
// batch 1 and its cache copied to every row (prefill is not what is measured), then decode_tokens
// single-token steps are timed one by one, ending at `context` tokens of cache; tokens/s comes from
// the median step (the machine is shared), the mean is printed beside it.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "linearnexus/host/config.h"
#include "linearnexus/model.h"
#include "linearnexus/host/plugin_host.h"

using namespace linearnexus;

namespace {

std::shared_ptr<LMModel> make(PluginHost& host, const std::string& block, const std::string& block_yaml,
                              int64_t n_layer) {
  const std::string yaml =
      "data: {path: \"builtin:arithmetic\"}\nmodel: {hidden_size: 768, n_layer: " + std::to_string(n_layer) +
      ", max_seq_len: 2048, block_pattern: [" + block + "], blocks: {" + block + ": " + block_yaml + "}}\n";
  Experiment e = parse_experiment(yaml, "bench_mla", "", {}, host);
  auto m = std::make_shared<LMModel>(e.model_config(50257), host.registry());
  m->eval();
  return m;
}

struct Result {
  double bytes_per_token_layer, tokens_per_s, ms_per_step, median_ms;
};

// The prompt's cache at batch 1.
ModelState prefill(LMModel& m, int64_t context, int64_t decode_tokens) {
  torch::NoGradGuard g;
  torch::manual_seed(0);
  ModelState one = m.init_state(1, context);
  m.forward(torch::randint(0, 50257, {1, context - decode_tokens}, at::kLong), &one, Mode::Prefill);
  return one;
}

Result run(LMModel& m, const ModelState& one, int64_t batch, int64_t context, int64_t decode_tokens) {
  torch::NoGradGuard g;
  ModelState s = one.index_select(at::zeros({batch}, at::kLong));  // a copy: `one` stays as prefilled
  const double bpt = static_cast<double>(s.bytes()) / static_cast<double>(batch * context * m.config().dims.n_layer);
  auto tok = torch::randint(0, 50257, {batch, 1}, at::kLong);
  m.forward(tok, &s, Mode::Decode);  // warm-up step (allocations)
  using clock = std::chrono::steady_clock;
  const int64_t steps = decode_tokens - 1;
  std::vector<double> ms;  // per step: the median resists the shared machine's load spikes
  for (int64_t i = 0; i < steps; ++i) {
    auto t0 = clock::now();
    tok = m.forward(tok, &s, Mode::Decode).select(1, -1).argmax(-1, true);
    ms.push_back(1000.0 * std::chrono::duration<double>(clock::now() - t0).count());
  }
  double total = 0;
  for (double x : ms) total += x;
  std::sort(ms.begin(), ms.end());
  const double median = ms[ms.size() / 2];
  return {bpt, 1000.0 * batch / median, total / steps, median};
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t n_layer = argc > 1 ? std::atoll(argv[1]) : 12;
  const int64_t decode_tokens = argc > 2 ? std::atoll(argv[2]) : 64;
  const int64_t context = argc > 3 ? std::atoll(argv[3]) : 1024;
  const int threads = argc > 4 ? std::atoi(argv[4]) : 2;
  try {
    at::set_num_threads(threads);
    PluginHost host;
    const std::string mla_dims =
        "{n_head: 12, kv_lora_rank: 256, q_lora_rank: 0, qk_nope_head_dim: 64, "
        "qk_rope_head_dim: 32, v_head_dim: 64, decode: ";
    struct Variant {
      std::string label, block, yaml;
    };
    std::vector<Variant> variants{{"attention (MHA)", "attention", "{n_head: 12}"},
                                  {"mla (absorbed decode)", "mla", mla_dims + "absorbed}"},
                                  {"mla (naive decode)", "mla", mla_dims + "naive}"}};
    std::printf(
        "gpt-small width (768, 12 heads), %lld layers, vocab 50257, context %lld, %lld decode steps timed, "
        "%d threads\n",
        (long long)n_layer, (long long)context, (long long)decode_tokens - 1, threads);
    std::printf("%-24s %6s %18s %14s %16s %14s\n", "model", "batch", "cache B/token/layer", "decode tok/s",
                "median ms/step", "mean ms/step");
    std::vector<std::shared_ptr<LMModel>> models;
    std::vector<ModelState> prompts;
    for (const auto& v : variants) {
      models.push_back(make(host, v.block, v.yaml, n_layer));
      prompts.push_back(prefill(*models.back(), context, decode_tokens));
    }
    // Batch outermost so the variants are measured side by side, under similar load.
    for (int64_t batch : {1, 16}) {
      for (size_t i = 0; i < variants.size(); ++i) {
        const auto& v = variants[i];
        // Naive decode re-materialises all 1024 tokens' k/v every step: batch 1 is enough to show it.
        if (v.label == "mla (naive decode)" && batch > 1) continue;
        Result r = run(*models[i], prompts[i], batch, context, decode_tokens);
        std::printf("%-24s %6lld %18.0f %14.1f %16.1f %14.1f\n", v.label.c_str(), (long long)batch,
                    r.bytes_per_token_layer, r.tokens_per_s, r.median_ms, r.ms_per_step);
        std::fflush(stdout);
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_mla: %s\n", e.what());
    return 1;
  }
  return 0;
}
