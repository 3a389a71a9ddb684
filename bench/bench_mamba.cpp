// Forward + backward of one mamba block: the chunked and fused scans against the sequential reference.
// Usage: bench_mamba [B [T [C [repeats [chunk sizes...]]]]]   defaults: 8 1024 256 3, chunk 64
// Loads the mamba plugin the way the runner does (the plugin folder next to this executable).
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

std::shared_ptr<Block> make_block(PluginHost& host, int64_t C, const std::string& scan, int64_t chunk) {
  const auto& reg = host.registry().get(PluginKind::Block, "mamba");
  Params p = params_from_defaults(reg.schema, "model.blocks.mamba");
  for (const auto& s : reg.schema) {
    if (s.key == "scan") p.set("scan", parse_param_value(s, scan, "bench"));
    if (s.key == "chunk_size") p.set("chunk_size", parse_param_value(s, std::to_string(chunk), "bench"));
  }
  ModelDims d;
  d.hidden_size = C;
  d.n_layer = 1;
  d.vocab_size = 256;
  d.max_seq_len = 1 << 20;
  return host.registry().make_block("mamba", d, p, 0);
}

// Median milliseconds of forward + backward (after one warm-up run).
double time_ms(Block& b, const at::Tensor& x, int repeats) {
  std::vector<double> ms;
  for (int i = 0; i <= repeats; ++i) {
    b.zero_grad();
    auto xi = x.clone().requires_grad_(true);
    auto t0 = std::chrono::steady_clock::now();
    ForwardContext ctx;
    auto y = b.forward(xi, {}, ctx).y;
    y.pow(2).mean().backward();
    double t = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    if (i > 0) ms.push_back(t);
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t B = argc > 1 ? std::atoll(argv[1]) : 8, T = argc > 2 ? std::atoll(argv[2]) : 1024,
                C = argc > 3 ? std::atoll(argv[3]) : 256;
  const int repeats = argc > 4 ? std::max(1, std::atoi(argv[4])) : 3;
  std::vector<int64_t> chunks;
  for (int i = 5; i < argc; ++i) chunks.push_back(std::atoll(argv[i]));
  if (chunks.empty()) chunks.push_back(64);
  try {
    init_runtime();  // threads (LINEARNEXUS_NUM_THREADS) and the allocator, as in `linearnexus run`
    PluginHost host;
    torch::manual_seed(0);
    auto x = torch::randn({B, T, C});
    std::printf("mamba block forward+backward, B=%lld T=%lld C=%lld (d_inner %lld, d_state 16), %d threads, median of %d\n",
                (long long)B, (long long)T, (long long)C, (long long)(2 * C), at::get_num_threads(), repeats);
    auto seq = make_block(host, C, "sequential", 64);
    const double seq_ms = time_ms(*seq, x, repeats);
    std::printf("| scan | chunk_size | ms | speed-up vs sequential |\n|---|---|---|---|\n");
    std::printf("| sequential reference | - | %.1f | 1.00x |\n", seq_ms);
    for (const char* scan : {"chunk", "auto"}) {
      for (int64_t q : chunks) {
        auto b = make_block(host, C, scan, q);
        const double ms = time_ms(*b, x, repeats);
        std::printf("| %s | %lld | %.1f | %.2fx |\n", std::string(scan) == "auto" ? "fused (auto)" : scan, (long long)q,
                    ms, seq_ms / ms);
        std::fflush(stdout);
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_mamba: %s\n", e.what());
    return 1;
  }
  return 0;
}
