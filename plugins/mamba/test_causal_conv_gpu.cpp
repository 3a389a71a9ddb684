// The CUDA causal depthwise conv + SiLU (causal_conv.cu through causal_conv_gpu.cpp) against the
// plain ops it replaces (at::silu of layers.h's causal_depthwise_conv1d) in float64 on the CPU:
// output and the gradients of x, weight and bias at T = 1, 7, 37, 1024, taps 1, 3, 4, 133 channels
// (not a whole number of blocks), x a strided narrow as the block's in-projection gives it, fp32
// and bf16; the cached path (a history in, the new history out) as prefill uses it. CTest label
// `gpu`: skips without CUDA.
#include <cstdio>

#include "catch.h"
#include "causal_conv_gpu.h"
#include "linearnexus/layers.h"
#include "gpu_test_util.h"
#include "test_util.h"

using namespace linearnexus;
using namespace lntest;

namespace {

void check_conv(int64_t B, int64_t T, int64_t D, int64_t K, at::ScalarType dtype, bool with_bias) {
  const double tol = dtype == at::kFloat ? 1e-5 : 1e-2;
  INFO("B " << B << " T " << T << " D " << D << " K " << K << (dtype == at::kFloat ? " fp32" : " bf16")
            << (with_bias ? " bias" : " no bias"));
  torch::manual_seed(100 * T + K);
  auto o = at::TensorOptions().dtype(at::kDouble);
  // x: the first half of a [B, T, 2D] tensor (rows 2D apart), rounded to the kernel's dtype.
  auto xz = at::randn({B, T, 2 * D}, o).to(dtype).to(at::kDouble);
  auto w = (at::randn({D, K}, o) * 0.5).to(at::kFloat).to(at::kDouble).requires_grad_(true);
  auto b = with_bias ? (at::randn({D}, o) * 0.5).to(at::kFloat).to(at::kDouble).requires_grad_(true) : at::Tensor();
  auto x_ref = xz.narrow(2, 0, D).detach().requires_grad_(true);
  auto wout = at::randn({B, T, D}, o);
  auto y_ref = at::silu(causal_depthwise_conv1d(x_ref, w, b, {}, nullptr));
  (y_ref * wout).sum().backward();

  auto xz_g = xz.to(at::kCUDA, dtype).requires_grad_(true);
  auto w_g = w.detach().to(at::kCUDA, at::kFloat).requires_grad_(true);
  auto b_g = with_bias ? b.detach().to(at::kCUDA, at::kFloat).requires_grad_(true) : at::Tensor();
  REQUIRE(mamba::cuda_conv_applies(xz_g, K));
  auto y = mamba::conv_silu_cuda(xz_g.narrow(2, 0, D), w_g, b_g, {}, nullptr);
  REQUIRE(y.scalar_type() == dtype);
  REQUIRE(y.is_contiguous());
  (y.to(at::kDouble) * wout.to(at::kCUDA)).sum().backward();
  const double ey = rel_error(y, y_ref), ex = rel_error(xz_g.grad().narrow(2, 0, D), x_ref.grad()),
               ew = rel_error(w_g.grad(), w.grad());
  std::printf("gpu-conv T %5lld K %lld %s: y %.1e dx %.1e dw %.1e", static_cast<long long>(T),
              static_cast<long long>(K), dtype == at::kFloat ? "fp32" : "bf16", ey, ex, ew);
  CHECK(ey < tol);
  CHECK(ex < tol);
  CHECK(ew < tol);
  if (with_bias) {
    const double eb = rel_error(b_g.grad(), b.grad());
    std::printf(" db %.1e", eb);
    CHECK(eb < tol);
  }
  std::printf("\n");
  // The other half of xz is not an operand: no gradient there.
  CHECK(xz_g.grad().narrow(2, D, D).abs().max().item<double>() == 0.0);
}

}  // namespace

TEST_CASE("cuda causal conv + silu == silu(causal_depthwise_conv1d): output and gradients (fp32, bf16)", "[gpu]") {
  LN_SKIP_WITHOUT_CUDA();
  for (auto dtype : {at::kFloat, at::kBFloat16})
    for (int64_t T : {1, 7, 37, 1024})
      for (int64_t K : {1, 3, 4}) check_conv(2, T, 133, K, dtype, K != 3);
}

TEST_CASE("cuda causal conv + silu: a history in and the new history out == the plain ops (prefill)", "[gpu]") {
  LN_SKIP_WITHOUT_CUDA();
  torch::NoGradGuard no_grad;
  for (int64_t T : {1, 2, 5, 70}) {
    INFO("T " << T);
    const int64_t B = 3, D = 133, K = 4;
    auto f = at::TensorOptions().dtype(at::kFloat);
    auto x = at::randn({B, T, D}, f), w = at::randn({D, K}, f) * 0.5, b = at::randn({D}, f) * 0.5;
    auto h = at::randn({B, D, K - 1}, f);
    at::Tensor nh_ref, nh;
    auto y_ref = at::silu(causal_depthwise_conv1d(x, w, b, h, &nh_ref));
    auto y = mamba::conv_silu_cuda(x.to(at::kCUDA), w.to(at::kCUDA), b.to(at::kCUDA), h.to(at::kCUDA), &nh);
    CHECK(rel_error(y, y_ref) < 1e-5);
    REQUIRE(nh.sizes() == nh_ref.sizes());
    CHECK(rel_error(nh, nh_ref) < 1e-6);
  }
}
