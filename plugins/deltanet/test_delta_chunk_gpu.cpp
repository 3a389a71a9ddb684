// The CUDA delta-rule chunk kernels (delta_chunk.cu, delta_chunk_bwd.cu through delta_chunk_gpu.cpp)
// against core's tensor-op forms (delta_scan_chunked, and delta_scan_recurrent for a short sequence,
// fp32): outputs, the final state and the gradients of q, k, v, beta, g and s0, fp32 and bf16, T not a
// multiple of the chunk (150, 5, 64), B = 1 with T = 16384 (forward), head_dim 64 and 128, with and
// without g and s0, padding tokens (beta = 0, g = 0). q, k and v reach the kernel as transposed,
// strided views of one [B, T, 3 H D] tensor, as the block's heads. Then the deltanet and
// gated_deltanet blocks on CUDA, forward + backward, with LINEARNEXUS_DELTA_KERNEL=1 against without,
// and prefill through the kernel (its initial state too) followed by decoding.
// The kernels take bf16 matmul operands even for fp32 inputs, so both dtypes are held to bf16-level
// tolerances (the CPU emulator, emu/run.sh, measured <= 5.5e-3 relative for every output and gradient).
// CTest label `gpu`: skips without CUDA.
// STATUS: written without a GPU; never run.
#include <cstdio>
#include <string>
#include <tuple>
#include <vector>

#include "block_contract.h"
#include "catch.h"
#include "delta_chunk_gpu.h"
#include "env_var.h"
#include "gpu_test_util.h"
#include "linearnexus/chunked_scan.h"
#include "linearnexus/compat.h"

using namespace linearnexus;
using namespace lntest;

namespace {

struct Case {
  int64_t B, T, H, D;
  at::ScalarType dtype;
  bool s0;
  std::string decay;  // none (deltanet) | gated (gated_deltanet's range) | strong (g in -3.5 .. -0.5)
  bool backward = true;
  bool recurrent = false;  // the reference: delta_scan_recurrent instead of delta_scan_chunked
};

void check(const Case& c) {
  const auto [B, T, H, D, dtype, with_s0, decay, backward, recurrent] = c;
  INFO("B " << B << " T " << T << " H " << H << " D " << D << " " << (dtype == at::kFloat ? "fp32" : "bf16") << " s0 "
            << with_s0 << " decay " << decay);
  at::manual_seed(T * 7 + D + H);
  const auto f = at::TensorOptions().dtype(at::kFloat).device(at::kCUDA);
  // The inputs as the kernel sees them (q, k, v rounded to `dtype`), fp32 leaves [B, H, T, D].
  auto leaf = [&](at::Tensor t) { return t.to(dtype).to(at::kFloat).detach().requires_grad_(backward); };
  auto l2 = [](const at::Tensor& t) { return t / t.norm(2, -1, true); };
  auto q = leaf(l2(at::randn({B, H, T, D}, f)) / std::sqrt(double(D))), k = leaf(l2(at::randn({B, H, T, D}, f))),
       v = leaf(at::randn({B, H, T, D}, f));
  auto pad = (at::rand({B, H, T}, f) > 0.05).to(at::kFloat);  // ~5% padding tokens: beta = 0, g = 0
  auto beta = (at::sigmoid(at::randn({B, H, T}, f)) * pad).detach().requires_grad_(backward);
  at::Tensor g;
  if (decay == "gated") g = -(at::rand({H, 1}, f) * 15 + 1) * (at::rand({B, H, T}, f) * 4.6 - 6.9).exp();
  if (decay == "strong") g = -(at::rand({B, H, T}, f) * 3 + 0.5);
  if (g.defined()) g = (g * pad).detach().requires_grad_(backward);
  auto s0 = with_s0 ? (at::randn({B, H, D, D}, f) * 0.3).requires_grad_(backward) : at::Tensor();
  auto wo = at::randn({B, H, T, D}, f).to(dtype).to(at::kFloat), ws = at::randn({B, H, D, D}, f);

  auto Sref = with_s0 ? s0 : at::Tensor();
  auto oref = recurrent ? delta_scan_recurrent(q, k, v, beta, g, Sref) : delta_scan_chunked(q, k, v, beta, g, Sref, 64);
  std::vector<at::Tensor> leaves{q, k, v, beta, g, s0}, ref_grads(6);
  if (backward) {
    ((oref * wo).sum() + (Sref * ws).sum()).backward();
    for (int i = 0; i < 6; ++i)
      if (leaves[i].defined()) ref_grads[i] = leaves[i].grad().clone(), leaves[i].mutable_grad() = at::Tensor();
  }

  // The kernel, on transposed strided views of one [B, T, 3 H D] tensor in `dtype` (as the block's heads).
  auto qkv =
      at::cat({q.transpose(1, 2).flatten(2), k.transpose(1, 2).flatten(2), v.transpose(1, 2).flatten(2)}, 2).to(dtype);
  auto heads = [&](int64_t i) { return qkv.narrow(2, i * H * D, H * D).view({B, T, H, D}).transpose(1, 2); };
  REQUIRE(deltanet::delta_cuda_applies(heads(0), D));
  auto r = deltanet::delta_chunk_cuda(heads(0), heads(1), heads(2), beta, g, s0);
  const auto &o = r.o, &state = r.state;
  REQUIRE(o.scalar_type() == dtype);
  REQUIRE(state.scalar_type() == at::kFloat);
  CHECK(at::isfinite(o).all().item<bool>());
  const double eo = rel_error(o, oref), es = rel_error(state, Sref);
  std::printf("delta T %5lld D %3lld %s s0 %d %-6s%s: o %.1e state %.1e", static_cast<long long>(T),
              static_cast<long long>(D), dtype == at::kFloat ? "fp32" : "bf16", with_s0, decay.c_str(),
              recurrent ? " (recurrent ref)" : "", eo, es);
  CHECK(eo < 1e-2);
  CHECK(es < 1e-2);
  if (backward) {
    ((o.to(at::kFloat) * wo).sum() + (state * ws).sum()).backward();
    const char* names[] = {"q", "k", "v", "beta", "g", "s0"};
    for (int i = 0; i < 6; ++i) {
      if (!leaves[i].defined()) continue;
      INFO("gradient of " << names[i]);
      REQUIRE(leaves[i].grad().defined());
      const double e = rel_error(leaves[i].grad(), ref_grads[i]);
      std::printf(" d%s %.1e", names[i], e);
      CHECK(e < 1.5e-2);
    }
  }
  std::printf("\n");
}

double rel_err(const at::Tensor& a, const at::Tensor& ref) { return rel_error(a.to(at::kFloat), ref.to(at::kFloat)); }

// The block on CUDA, forward + backward, with the kernel (LINEARNEXUS_DELTA_KERNEL=1) against the
// tensor-op path: output, input gradient and every parameter's gradient.
void check_block(PluginHost& host, const std::string& name, int64_t C, int64_t n_head, bool bf16) {
  INFO("block " << name << " C " << C << " n_head " << n_head << (bf16 ? " bf16" : " fp32"));
  torch::manual_seed(3);
  KV kv{{"n_head", std::to_string(n_head)}};
  auto ref = make_test_block(host, name, C, kv);
  fill_parameters(*ref, name == "gated_deltanet" ? std::map<std::string, double>{{"A_log", 0.0}, {"dt_bias", 0.0}}
                                                 : std::map<std::string, double>{});
  auto ker = make_test_block(host, name, C, kv);
  copy_parameters(*ker, *ref);
  ref->to(at::kCUDA), ker->to(at::kCUDA);
  auto x = torch::randn({2, 150, C}, at::kCUDA), r = torch::randn({2, 150, C}, at::kCUDA);
  auto run = [&](Block& blk, const char* env) {
    EnvVar e("LINEARNEXUS_DELTA_KERNEL", env);
    auto xi = x.clone().requires_grad_(true);
    at::Tensor y;
    {
      compat::AutocastGuard autocast(bf16, at::kBFloat16);
      y = run_block(blk, xi, {}, Mode::Train).y;
    }
    (y.to(at::kFloat) * r).sum().backward();
    return std::make_pair(y, xi.grad());
  };
  auto [y0, gx0] = run(*ref, nullptr);
  auto [y1, gx1] = run(*ker, "1");
  double worst = 0;
  CHECK(rel_err(y1, y0) < 1e-2);
  CHECK(rel_err(gx1, gx0) < 1e-2);
  auto kp = ker->named_parameters();
  for (const auto& p : ref->named_parameters()) {
    INFO("gradient of " << p.key());
    REQUIRE(kp[p.key()].grad().defined());
    const double e = rel_err(kp[p.key()].grad(), p.value().grad());
    CHECK(e < 1e-1);  // as test_gpu_blocks' bf16 bound: A_log's and dt_bias' sums cancel
    worst = std::max(worst, e);
  }
  std::printf("delta block %-15s C %lld D %lld %s: output %.1e input grad %.1e worst parameter grad %.1e\n",
              name.c_str(), static_cast<long long>(C), static_cast<long long>(C / n_head), bf16 ? "bf16" : "fp32",
              rel_err(y1, y0), rel_err(gx1, gx0), worst);
}

// Prefill through the kernel (two calls, the second continuing the first's state: the kernel's s0),
// then token-by-token decoding (the recurrence) == the training form without the kernel, on CUDA.
void check_prefill_decode(PluginHost& host, const std::string& name) {
  INFO("block " << name << " prefill (kernel) + decode");
  torch::manual_seed(5);
  auto b = make_test_block(host, name, 256, {{"n_head", "4"}});
  b->to(at::kCUDA);
  b->eval();
  torch::NoGradGuard no_grad;
  const int64_t B = 2, T = 150;
  auto x = torch::randn({B, T, 256}, at::kCUDA);
  at::Tensor full;
  {
    EnvVar off("LINEARNEXUS_DELTA_KERNEL", nullptr);
    full = run_block(*b, x, {}, Mode::Train).y;
  }
  EnvVar on("LINEARNEXUS_DELTA_KERNEL", "1");
  LayerState s = b->init_state(B, T, x.options());
  std::vector<at::Tensor> ys;
  for (const auto& [t0, n, mode] : std::vector<std::tuple<int64_t, int64_t, Mode>>{
           {0, 70, Mode::Prefill}, {70, 50, Mode::Prefill}, {120, 30, Mode::Decode}}) {
    for (int64_t t = t0; t < t0 + n; t += mode == Mode::Decode ? 1 : n) {
      auto o = run_block(*b, x.narrow(1, t, mode == Mode::Decode ? 1 : n), std::move(s), mode, t);
      ys.push_back(o.y);
      s = std::move(o.state);
    }
  }
  const double e = rel_err(at::cat(ys, 1), full);
  std::printf("delta block %-15s prefill 70 + 50 (kernel) + decode 30: %.1e\n", name.c_str(), e);
  CHECK(e < 1e-2);
}

}  // namespace

TEST_CASE("cuda delta chunk kernels == delta_scan_chunked: outputs, state, every gradient (T 150, fp32, bf16)",
          "[gpu]") {
  LN_SKIP_WITHOUT_CUDA();
  for (const int64_t D : {64, 128})
    for (const auto dtype : {at::kFloat, at::kBFloat16})
      for (const bool s0 : {true, false})
        for (const std::string decay : {"none", "gated", "strong"}) check({2, 150, 3, D, dtype, s0, decay});
}

TEST_CASE("cuda delta chunk kernels: T shorter than a chunk and exactly one, against the recurrence", "[gpu]") {
  LN_SKIP_WITHOUT_CUDA();
  check({1, 5, 2, 64, at::kFloat, true, "strong", true, true});
  check({2, 64, 4, 128, at::kBFloat16, false, "gated", true, true});
  check({1, 77, 2, 64, at::kBFloat16, true, "none", true, true});
}

TEST_CASE("cuda delta chunk kernels, one long sequence: B = 1, T = 16384 (forward, fp32, bf16)", "[gpu]") {
  LN_SKIP_WITHOUT_CUDA();
  for (const auto dtype : {at::kFloat, at::kBFloat16}) check({1, 16384, 4, 64, dtype, true, "gated", false});
  check({1, 4096, 2, 128, at::kBFloat16, true, "gated", true});
}

TEST_CASE("cuda delta chunk kernels in the deltanet blocks: LINEARNEXUS_DELTA_KERNEL=1 == without", "[gpu]") {
  LN_SKIP_WITHOUT_CUDA();
  PluginHost host;
  for (const std::string name : {"deltanet", "gated_deltanet"})
    for (const bool bf16 : {false, true}) {
      check_block(host, name, 256, 4, bf16);  // head_dim 64
      check_block(host, name, 256, 2, bf16);  // head_dim 128
    }
}

TEST_CASE("cuda delta chunk kernels in the deltanet blocks: prefill through the kernel, then decoding", "[gpu]") {
  LN_SKIP_WITHOUT_CUDA();
  PluginHost host;
  for (const std::string name : {"deltanet", "gated_deltanet"}) check_prefill_decode(host, name);
}
