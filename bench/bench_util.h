#pragma once
// What the block benchmarks (bench_blocks, bench_mamba) share: one block built from its plugin's
// defaults plus overrides, and the timing loop (one warm-up call, then the median; synchronised on
// CUDA so that the time is the GPU's, not the launches').
#include <torch/cuda.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "linearnexus/error.h"
#include "linearnexus/model.h"
#include "linearnexus/host/plugin_host.h"
#include "linearnexus/host/params_yaml.h"
#include "linearnexus/registry.h"

namespace benchutil {

using namespace linearnexus;

// The block `name` of width C (one layer of n_layer for its init), `overrides` parsed by its schema.
inline std::shared_ptr<Block> make_block(PluginHost& host, const std::string& name, int64_t C,
                                         const std::map<std::string, std::string>& overrides = {}) {
  const auto& reg = host.registry().get(PluginKind::Block, name);
  Params p = params_from_defaults(reg.schema, "model.blocks." + name);
  for (const auto& [k, v] : overrides) {
    auto spec = std::find_if(reg.schema.begin(), reg.schema.end(), [&](const ParamSpec& s) { return s.key == k; });
    if (spec == reg.schema.end()) throw Error("bench: block " + name + " has no parameter " + k);
    p.set(k, parse_param_value(*spec, v, "bench"));
  }
  ModelDims d;
  d.hidden_size = C;
  d.n_layer = 1;
  d.vocab_size = 256;
  d.max_seq_len = 1 << 20;
  return host.registry().make_block(name, d, p, 0);
}

// Median milliseconds of f over `repeats` calls after one warm-up call.
inline double median_ms(const std::function<void()>& f, int repeats, bool cuda) {
  std::vector<double> ms;
  for (int i = 0; i <= repeats; ++i) {
    if (cuda) torch::cuda::synchronize();
    auto t0 = std::chrono::steady_clock::now();
    f();
    if (cuda) torch::cuda::synchronize();
    double t = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    if (i > 0) ms.push_back(t);
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

// Median milliseconds of one block's forward + backward (Train mode) on x [B, T, C].
inline double fwd_bwd_ms(Block& b, const at::Tensor& x, int repeats) {
  return median_ms(
      [&] {
        b.zero_grad();
        auto xi = x.clone().requires_grad_(true);
        auto y = b.forward(xi, {}, ForwardContext{}).y;
        y.to(at::kFloat).pow(2).mean().backward();
      },
      repeats, x.is_cuda());
}

}  // namespace benchutil
