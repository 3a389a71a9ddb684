// Decoding's skinny matmul (core/sdk/src/cuda/skinny_gemm.cu) alone against cuBLAS (at::matmul) on
// gpt-small's matrices, y[M, N] = x[M, K] W[N, K]^T in bf16 at M = 1 and 16 rows.
//
// Timing: a CUDA graph of `copies` back-to-back calls, each on its own copy of W (together more than
// 2.5x the GPU's L2, so each call reads its weight from DRAM, not from the cache the previous
// replay left), replayed 3 times to warm up, then 25 times between CUDA events; the median replay
// over `copies` is one call's time, launch gaps included (what a captured decode step pays).
// Bytes moved = W + x + y. cuBLAS runs the same graph with at::matmul.
//
// Usage: bench_skinny_gemm [--sweep]   (--sweep: every launch configuration too, the best printed)
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/torch.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "cuda/skinny_gemm_cuda.h"

namespace {

using linearnexus::cuda::SkinnyGemmConfig;

constexpr double kPeak = 3.35e12;  // H100 SXM's DRAM bandwidth, the yardstick

// Median microseconds of one call of `call(copy)` over a graph of calls on every copy.
double graph_us(int copies, const std::function<void(int)>& call) {
  auto stream = c10::cuda::getStreamFromPool();
  c10::cuda::CUDAStreamGuard on(stream);
  for (int c = 0; c < copies; ++c) call(c);  // warm: cuBLAS's workspace, the launcher's device query
  stream.synchronize();
  at::cuda::CUDAGraph graph;
  graph.capture_begin();
  for (int c = 0; c < copies; ++c) call(c);
  graph.capture_end();
  for (int i = 0; i < 3; ++i) graph.replay();
  std::vector<double> us;
  for (int i = 0; i < 25; ++i) {
    at::cuda::CUDAEvent start(cudaEventDefault), end(cudaEventDefault);
    start.record(stream);
    graph.replay();
    end.record(stream);
    end.synchronize();
    us.push_back(start.elapsed_time(end) * 1e3 / copies);
  }
  std::sort(us.begin(), us.end());
  return us[us.size() / 2];
}

struct Shape {
  const char* name;
  int64_t K, N;
};

std::string config_str(const SkinnyGemmConfig& c) {
  char b[96];
  std::snprintf(b, sizeof b, "tiles %d warps %d splits %d kpw %ld", c.tiles, c.warps, c.splits, (long)c.kpw);
  return b;
}

}  // namespace

int main(int argc, char** argv) {
  bool sweep = false;
  for (int i = 1; i < argc; ++i) sweep = sweep || std::strcmp(argv[i], "--sweep") == 0;
  if (!at::hasCUDA()) {
    std::printf("bench_skinny_gemm: no CUDA device\n");
    return 0;
  }
  torch::NoGradGuard no_grad;
  const auto* prop = at::cuda::getCurrentDeviceProperties();
  // The device's own nominal DRAM bandwidth where known (an H200 has 4.8 TB/s), beside the 3.35.
  const double device_peak = std::strstr(prop->name, "H200") ? 4.8e12 : kPeak;
  std::printf("device: %s, %d SMs, L2 %d MB, nominal DRAM bandwidth %.2f TB/s\n", prop->name, prop->multiProcessorCount,
              prop->l2CacheSize >> 20, device_peak / 1e12);
  const std::vector<Shape> shapes = {{"qkv 768->2304", 768, 2304},
                                     {"up 768->3072", 768, 3072},
                                     {"down 3072->768", 3072, 768},
                                     {"head 768->50257", 768, 50257},
                                     {"head padded 768->50304", 768, 50304}};
  auto o = at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16);
  std::printf(
      "\n| matrix (K -> N) | M | MB moved | ours us | ours GB/s | %% of 3.35 TB/s | cuBLAS us | cuBLAS GB/s | "
      "ours PDL us | %% of device peak (PDL) | config |\n|---|---|---|---|---|---|---|---|---|---|---|\n");
  std::vector<std::string> sweep_lines;
  for (const auto& s : shapes) {
    const double w_bytes = 2.0 * s.N * s.K;
    const int copies = std::max(2, static_cast<int>(2.5 * prop->l2CacheSize / w_bytes + 1));
    std::vector<at::Tensor> W;
    for (int c = 0; c < copies; ++c) W.push_back(at::randn({s.N, s.K}, o) * 0.03);
    for (int64_t M : {1, 16}) {
      auto x = at::randn({M, s.K}, o);
      const double bytes = w_bytes + 2.0 * M * s.K + 2.0 * M * s.N;
      const SkinnyGemmConfig auto_cfg = linearnexus::cuda::skinny_gemm_config(M, s.N, s.K);
      auto ours = [&](const SkinnyGemmConfig* cfg, bool pdl) {
        return graph_us(copies, [&](int c) {
          linearnexus::cuda::skinny_linear(x, W[c], at::Tensor(), at::Tensor(), false, cfg, pdl);
        });
      };
      const double t = ours(nullptr, false);
      double t_pdl = -1;
      try {
        t_pdl = ours(nullptr, true);
      } catch (const std::exception& e) {
        std::printf("(PDL launch failed: %s)\n", e.what());
      }
      const double t_blas = graph_us(copies, [&](int c) { at::matmul(x, W[c].t()); });
      // Both agree (a check that the timed kernel computes the product).
      auto diff = (linearnexus::cuda::skinny_linear(x, W[0], at::Tensor(), at::Tensor()).to(at::kFloat) -
                   at::matmul(x, W[0].t()).to(at::kFloat))
                      .abs()
                      .max()
                      .item<double>();
      std::printf("| %s | %ld | %.2f | %.2f | %.0f | %.1f%% | %.2f | %.0f | %.2f | %.1f%% (%.1f%%) | %s%s |\n", s.name,
                  (long)M, bytes / 1e6, t, bytes / t / 1e3, 100.0 * bytes / (t * 1e-6) / kPeak, t_blas,
                  bytes / t_blas / 1e3, t_pdl, 100.0 * bytes / (t * 1e-6) / device_peak,
                  t_pdl > 0 ? 100.0 * bytes / (t_pdl * 1e-6) / device_peak : 0.0, config_str(auto_cfg).c_str(),
                  diff > 0.05 ? " MISMATCH" : "");
      std::fflush(stdout);
      if (!sweep) continue;
      // Every configuration kind: tiles x warps x k blocks a warp (the cluster split follows).
      const int64_t nkb = (s.K + 31) / 32;
      double best = 1e30;
      SkinnyGemmConfig best_cfg;
      for (int tiles : {1, 2, 4})
        for (int warps : {4, 8})
          for (int64_t kpw_target : {1, 2, 3, 4, 6, 12}) {
            const int64_t splits = std::max<int64_t>(1, (nkb + warps * kpw_target - 1) / (warps * kpw_target));
            if (splits > 8 || (splits > 1 && prop->major < 9)) continue;
            SkinnyGemmConfig c{tiles, warps, static_cast<int>(splits), (nkb + warps * splits - 1) / (warps * splits)};
            const double tc = ours(&c, false);
            if (tc < best) best = tc, best_cfg = c;
          }
      char line[256];
      std::snprintf(line, sizeof line, "%s M %ld: best %.2f us (%.1f%% of 3.35 TB/s) with %s; auto %.2f us with %s",
                    s.name, (long)M, best, 100.0 * bytes / (best * 1e-6) / kPeak, config_str(best_cfg).c_str(), t,
                    config_str(auto_cfg).c_str());
      sweep_lines.push_back(line);
      std::printf("sweep: %s\n", line);
      std::fflush(stdout);
    }
  }
  for (const auto& l : sweep_lines) std::printf("%s\n", l.c_str());
  return 0;
}
