// Forward + backward of one mamba block: the chunked and fused scans against the sequential reference.
// Usage: bench_mamba [B [T [C [repeats [chunk sizes...]]]]]   defaults: 8 1024 256 3, chunk 64
// Loads the mamba plugin the way the runner does (the plugin folder next to this executable).
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "bench_util.h"
#include "linearnexus/host/runtime.h"
#include "linearnexus/host/session.h"

using namespace linearnexus;

using benchutil::fwd_bwd_ms;

namespace {

std::shared_ptr<Block> make_mamba(PluginHost& host, int64_t C, const std::string& scan, int64_t chunk) {
  return benchutil::make_block(host, "mamba", C, {{"scan", scan}, {"chunk_size", std::to_string(chunk)}});
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
    std::printf(
        "mamba block forward+backward, B=%lld T=%lld C=%lld (d_inner %lld, d_state 16), %d threads, median of %d\n",
        (long long)B, (long long)T, (long long)C, (long long)(2 * C), at::get_num_threads(), repeats);
    auto seq = make_mamba(host, C, "sequential", 64);
    const double seq_ms = fwd_bwd_ms(*seq, x, repeats);
    std::printf("| scan | chunk_size | ms | speed-up vs sequential |\n|---|---|---|---|\n");
    std::printf("| sequential reference | - | %.1f | 1.00x |\n", seq_ms);
    for (const char* scan : {"chunk", "auto"}) {
      for (int64_t q : chunks) {
        auto b = make_mamba(host, C, scan, q);
        const double ms = fwd_bwd_ms(*b, x, repeats);
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
