// Forward + backward of one block of each linear-time kind against attention, on the CPU, at
// growing T: where the fixed-size state starts to pay. Also the decoding cache per sequence at T.
// Usage: bench_blocks [B [C [repeats [T...]]]]   defaults: 1 256 3, T = 1024 4096
// Loads the block plugins the way the runner does (the plugin folder next to this executable).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "linearnexus/model.h"
#include "linearnexus/plugin_host.h"
#include "linearnexus/registry.h"
#include "linearnexus/session.h"

using namespace linearnexus;

namespace {

std::shared_ptr<Block> make_block(PluginHost& host, const std::string& name, int64_t C) {
  const auto& reg = host.registry().get(PluginKind::Block, name);
  Params p = params_from_defaults(reg.schema, "model.blocks." + name);
  ModelDims d;
  d.hidden_size = C;
  d.n_layer = 1;
  d.vocab_size = 256;
  d.max_seq_len = 1 << 20;
  return host.registry().make_block(name, d, p, 0);
}

// Median milliseconds of forward + backward (after one warm-up run).
double time_ms(Block& b, const at::Tensor& x, int repeats) {
  std::vector<double> ms;
  for (int i = 0; i <= repeats; ++i) {
    b.zero_grad();
    auto xi = x.clone().requires_grad_(true);
    auto t0 = std::chrono::steady_clock::now();
    auto y = b.forward(xi, {}, ForwardContext{}).y;
    y.pow(2).mean().backward();
    double t = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    if (i > 0) ms.push_back(t);
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t B = argc > 1 ? std::atoll(argv[1]) : 1, C = argc > 2 ? std::atoll(argv[2]) : 256;
  const int repeats = argc > 3 ? std::max(1, std::atoi(argv[3])) : 3;
  std::vector<int64_t> Ts;
  for (int i = 4; i < argc; ++i) Ts.push_back(std::atoll(argv[i]));
  if (Ts.empty()) Ts = {1024, 4096};
  try {
    init_runtime();
    PluginHost host;
    torch::manual_seed(0);
    std::printf("one block forward+backward on the CPU, B=%lld C=%lld, the blocks' defaults, %d threads, median of %d\n",
                (long long)B, (long long)C, at::get_num_threads(), repeats);
    std::printf("| block | T | ms | cache per sequence at T (fp32) |\n|---|---|---|---|\n");
    for (const char* name : {"attention", "gla", "mamba2", "deltanet", "gated_deltanet"}) {
      if (!host.registry().find(PluginKind::Block, name)) continue;
      auto b = make_block(host, name, C);
      for (int64_t T : Ts) {
        const double ms = time_ms(*b, torch::randn({B, T, C}), repeats);
        const double kib = b->init_state(1, T, at::TensorOptions().dtype(at::kFloat)).bytes() / 1024.0;
        std::printf("| %s | %lld | %.1f | %.0f KiB |\n", name, (long long)T, ms, kib);
        std::fflush(stdout);
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_blocks: %s\n", e.what());
    return 1;
  }
  return 0;
}
