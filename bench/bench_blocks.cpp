// The linear-time blocks against attention: one block's forward + backward at growing T (the same
// number of tokens per call: B = tokens / T), and B = 1 decoding time per token against the context
// length, with each block's cache per sequence there. Where the fixed-size state starts to pay.
// Usage: bench_blocks [--device cpu|cuda] [--C 256] [--tokens 16384] [--T 1024,4096,16384]
//                     [--decode 1024,4096,16384] [--repeats 3] [--budget-s 0] [--blocks attention,gla,...]
//        bench_blocks --cache-only [--C 768]    each block's cache with its defaults, from init_state
// On cuda under bf16 autocast (as training runs), on the CPU in fp32. Blocks with an n_head get
// n_head = C / 64 (heads of 64, as gpt-small), the rest their defaults. --budget-s > 0: rows that
// would start after that many seconds are printed as skipped. Loads the block plugins the way the
// runner does (the plugin folder next to this executable).
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#include "bench_util.h"
#include "linearnexus/compat.h"
#include "linearnexus/host/runtime.h"
#include "linearnexus/host/session.h"

using namespace linearnexus;

namespace {

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, ',');) out.push_back(item);
  return out;
}
std::vector<int64_t> split_ints(const std::string& s) {
  std::vector<int64_t> out;
  for (const auto& t : split(s)) out.push_back(std::stoll(t));
  return out;
}

std::shared_ptr<Block> make(PluginHost& host, const std::string& name, int64_t C) {
  const auto& schema = host.registry().get(PluginKind::Block, name).schema;
  const bool has_heads =
      std::any_of(schema.begin(), schema.end(), [](const ParamSpec& s) { return s.key == "n_head"; });
  return benchutil::make_block(host, name, C,
                               has_heads ? std::map<std::string, std::string>{{"n_head", std::to_string(C / 64)}}
                                         : std::map<std::string, std::string>{});
}

// Milliseconds per decoded token at B = 1 after a prompt of `context` tokens (prefilled, untimed).
double decode_ms(Block& b, int64_t context, int64_t C, const at::TensorOptions& o, int repeats) {
  torch::NoGradGuard g;
  LayerState st = b.init_state(1, context + repeats + 2, o);
  ForwardContext pre;
  pre.mode = Mode::Prefill;
  const auto x_opts = at::TensorOptions().device(o.device());  // the residual stream is fp32 (as in the model)
  st = b.forward(torch::randn({1, context, C}, x_opts), std::move(st), pre).state;
  auto x = torch::randn({1, 1, C}, x_opts);
  int64_t pos = context;
  return benchutil::median_ms(
      [&] {
        ForwardContext c;
        c.mode = Mode::Decode;
        c.start = pos++;
        st = b.forward(x, std::move(st), c).state;
      },
      repeats, o.device().is_cuda());
}

// Each block's decoding cache with its own defaults (the README's table), from init_state at three
// max_len: what grows with the context grows between 1024 and 4096.
void cache_table(PluginHost& host, const std::vector<std::string>& blocks, int64_t C) {
  const auto o = at::TensorOptions().dtype(at::kFloat);
  std::printf("cache per layer and sequence, fp32, C = %lld, the blocks' defaults (LayerState::bytes of init_state)\n",
              (long long)C);
  std::printf("| block | max_len 1 | max_len 1024 | max_len 4096 | growth per token |\n|---|---|---|---|---|\n");
  for (const auto& name : blocks) {
    if (!host.registry().find(PluginKind::Block, name)) continue;
    auto b = benchutil::make_block(host, name, C);
    const int64_t b1 = b->init_state(1, 1, o).bytes(), b1k = b->init_state(1, 1024, o).bytes(),
                  b4k = b->init_state(1, 4096, o).bytes();
    std::printf("| %s | %lld B | %.1f KiB | %.1f KiB | %.0f B |\n", name.c_str(), (long long)b1, b1k / 1024.0,
                b4k / 1024.0, (b4k - b1k) / 3072.0);
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::string device = "cpu";
  int64_t C = 256, tokens = 16384;
  std::vector<int64_t> Ts{1024, 4096, 16384}, contexts{1024, 4096, 16384};
  std::vector<std::string> blocks{"attention", "swa", "gla", "mamba2", "deltanet", "gated_deltanet", "rwkv7"};
  int repeats = 3;
  double budget_s = 0;
  bool cache_only = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--cache-only") {
      cache_only = true;
      continue;
    }
    if (i + 1 >= argc) {
      std::fprintf(stderr, "bench_blocks: %s needs a value\n", a.c_str());
      return 2;
    }
    const std::string v = argv[++i];
    if (a == "--device")
      device = v;
    else if (a == "--C")
      C = std::stoll(v);
    else if (a == "--tokens")
      tokens = std::stoll(v);
    else if (a == "--T")
      Ts = split_ints(v);
    else if (a == "--decode")
      contexts = split_ints(v);
    else if (a == "--repeats")
      repeats = std::max(1, std::stoi(v));
    else if (a == "--budget-s")
      budget_s = std::stod(v);
    else if (a == "--blocks")
      blocks = split(v);
    else {
      std::fprintf(stderr, "bench_blocks: unknown option %s (see the usage at the top of bench/bench_blocks.cpp)\n",
                   a.c_str());
      return 2;
    }
  }
  const auto t_start = std::chrono::steady_clock::now();
  auto over_budget = [&] {
    return budget_s > 0 && std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count() > budget_s;
  };
  try {
    init_runtime();
    const bool cuda = device == "cuda";
    if (cuda && !torch::cuda::is_available()) throw Error("bench_blocks: --device cuda but no CUDA device");
    const auto dev = cuda ? at::Device(at::kCUDA) : at::Device(at::kCPU);
    const auto state_opts = at::TensorOptions().device(dev).dtype(cuda ? at::kBFloat16 : at::kFloat);
    compat::AutocastGuard autocast(cuda, at::kBFloat16);
    PluginHost host;
    if (cache_only) {
      cache_table(
          host, {"attention", "swa", "mla", "mamba", "mamba2", "gla", "deltanet", "gated_deltanet", "kda", "rwkv7"}, C);
      return 0;
    }
    torch::manual_seed(0);
    std::printf(
        "one block forward+backward on %s (%s), C=%lld, %lld tokens per call (B = tokens / T), %d threads, "
        "median of %d\n",
        cuda ? "cuda" : "the CPU", cuda ? "bf16 autocast" : "fp32", (long long)C, (long long)tokens,
        at::get_num_threads(), repeats);
    std::printf("| block | T | B | fwd+bwd ms | tokens/s | vs attention |\n|---|---|---|---|---|---|\n");
    std::map<int64_t, double> attention_ms;
    for (const auto& name : blocks) {
      if (!host.registry().find(PluginKind::Block, name)) continue;
      auto b = make(host, name, C);
      b->to(dev);
      for (int64_t T : Ts) {
        const int64_t B = std::max<int64_t>(1, tokens / T);
        if (over_budget()) {
          std::printf("| %s | %lld | %lld | skipped (time budget) | | |\n", name.c_str(), (long long)T, (long long)B);
          continue;
        }
        const double ms = benchutil::fwd_bwd_ms(*b, torch::randn({B, T, C}, at::TensorOptions().device(dev)), repeats);
        if (name == "attention") attention_ms[T] = ms;
        char vs[32] = "";
        if (attention_ms.count(T)) std::snprintf(vs, sizeof vs, "%.2fx", attention_ms[T] / ms);
        std::printf("| %s | %lld | %lld | %.2f | %.0f | %s |\n", name.c_str(), (long long)T, (long long)B, ms,
                    B * T / ms * 1e3, vs);
        std::fflush(stdout);
      }
    }
    std::printf("\nB = 1 decoding, one token after a prefilled context (%s), median of %d tokens\n",
                cuda ? "bf16" : "fp32", 4 * repeats);
    std::printf("| block | context | ms per token | cache per sequence |\n|---|---|---|---|\n");
    for (const auto& name : blocks) {
      if (!host.registry().find(PluginKind::Block, name)) continue;
      auto b = make(host, name, C);
      b->to(dev);
      b->eval();
      for (int64_t T : contexts) {
        const double kib = b->init_state(1, T, state_opts).bytes() / 1024.0;
        if (over_budget()) {
          std::printf("| %s | %lld | skipped (time budget) | %.0f KiB |\n", name.c_str(), (long long)T, kib);
          continue;
        }
        std::printf("| %s | %lld | %.3f | %.0f KiB |\n", name.c_str(), (long long)T,
                    decode_ms(*b, T, C, state_opts, 4 * repeats), kib);
        std::fflush(stdout);
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_blocks: %s\n", e.what());
    return 1;
  }
  return 0;
}
