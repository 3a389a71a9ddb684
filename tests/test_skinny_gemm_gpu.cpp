// Decoding's skinny matmul (core/sdk/src/cuda/skinny_gemm.cu) against the plain ops: y = x W^T
// (+ bias) (+ residual) for M = 1..16 rows, odd K and N, fp32 / bf16 bias and residual, GELU, every
// launch configuration kind (tiles, warps, cluster splits), gpt-small's four matrices; the fallback
// to at::linear (K % 8 != 0, gradients wanted, LINEARNEXUS_UNFUSED=1); linear_forward and the MLP
// under bf16 autocast. Tolerance: the kernel accumulates in fp32 and rounds once to bf16, so against
// an fp32 reference from the same bf16 inputs the error is bf16's rounding (relative 2^-9) plus
// summation order: ||y - ref|| / ||ref|| < 4e-3 and max |y - ref| < 1e-2 max |ref|; against
// at::linear in bf16 (cuBLAS, itself rounded) 1e-2 and 2e-2. CTest label `gpu`: skips without CUDA.
#include <cstdio>
#include <cstdlib>

#include "catch.h"
#include "gpu_test_util.h"
#include "linearnexus/compat.h"
#include "linearnexus/layers.h"
#include "test_util.h"

#ifdef LINEARNEXUS_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>

#include "cuda/skinny_gemm_cuda.h"
#endif

using namespace linearnexus;

namespace {

#ifdef LINEARNEXUS_WITH_CUDA
constexpr at::ScalarType kNone = at::ScalarType::Undefined;  // no bias / residual

struct Case {
  int64_t M, K, N;
  at::ScalarType bias = kNone, residual = kNone;  // kUndefined: none
  bool gelu = false;
  const cuda::SkinnyGemmConfig* config = nullptr;
};

// One call of skinny_linear against the fp32 reference and against at::linear in bf16.
void check(const Case& c) {
  INFO("M " << c.M << " K " << c.K << " N " << c.N << " bias " << c10::toString(c.bias) << " residual "
            << c10::toString(c.residual) << " gelu " << c.gelu << " config " << (c.config ? c.config->tiles : 0) << "/"
            << (c.config ? c.config->warps : 0) << "/" << (c.config ? c.config->splits : 0) << "/"
            << (c.config ? c.config->kpw : 0));
  auto o = at::TensorOptions().device(at::kCUDA);
  auto x = at::randn({c.M, c.K}, o).to(at::kBFloat16);
  auto w = (at::randn({c.N, c.K}, o) / std::sqrt(static_cast<double>(c.K))).to(at::kBFloat16);
  at::Tensor bias, residual;
  if (c.bias != kNone) bias = at::randn({c.N}, o).to(c.bias);
  if (c.residual != kNone) residual = at::randn({c.M, c.N}, o).to(c.residual);
  auto y = cuda::skinny_linear(x, w, bias, residual, c.gelu, c.config);
  CHECK(y.scalar_type() == (residual.defined() ? residual.scalar_type() : at::kBFloat16));
  CHECK(y.sizes() == at::IntArrayRef({c.M, c.N}));
  auto ref = at::linear(x.to(at::kFloat), w.to(at::kFloat), bias.defined() ? bias.to(at::kFloat) : at::Tensor());
  auto ops = at::linear(x, w, bias.defined() ? bias.to(at::kBFloat16) : at::Tensor());
  if (c.gelu) ref = at::gelu(ref, "tanh"), ops = at::gelu(ops, "tanh");
  if (residual.defined()) ref = ref + residual.to(at::kFloat), ops = residual + ops;
  const double e = lntest::rel_error(y, ref), m = lntest::max_rel_error(y, ref), eo = lntest::rel_error(y, ops),
               mo = lntest::max_rel_error(y, ops);
  CHECK(e < 4e-3);
  CHECK(m < 1e-2);
  CHECK(eo < 1e-2);
  CHECK(mo < 2e-2);
  if (e >= 4e-3 || m >= 1e-2)
    std::printf("skinny_linear M %ld K %ld N %ld: rel %.2e max %.2e (vs bf16 at::linear %.2e %.2e)\n", (long)c.M,
                (long)c.K, (long)c.N, e, m, eo, mo);
}
#endif

}  // namespace

TEST_CASE("skinny matmul equals at::linear for M = 1..16, odd K and N, with and without bias and residual", "[gpu]") {
  if (!at::hasCUDA()) LN_SKIP("no CUDA device in this LibTorch/machine");
#ifdef LINEARNEXUS_WITH_CUDA
  torch::manual_seed(11);
  for (int64_t M = 1; M <= 16; ++M) {
    check({M, 8, 1});                                  // one k block, one feature
    check({M, 24, 17});                                // K < 32: lanes past K load nothing
    check({M, 200, 33, at::kFloat});                   // K % 32 == 8, N % 16 == 1
    check({M, 776, 1001, at::kBFloat16, at::kFloat});  // fp32 residual stream: y in fp32
    check({M, 1032, 130, kNone, at::kBFloat16});       // bf16 residual, no bias
    check({M, 96, 40, at::kFloat, at::kFloat, true});  // GELU (the MLP's up projection)
  }
#endif
}

TEST_CASE("skinny matmul: every launch configuration kind gives the same sums (tiles, warps, cluster splits)",
          "[gpu]") {
  if (!at::hasCUDA()) LN_SKIP("no CUDA device in this LibTorch/machine");
#ifdef LINEARNEXUS_WITH_CUDA
  torch::manual_seed(12);
  const bool hopper = at::cuda::getCurrentDeviceProperties()->major >= 9;
  const int64_t K = 1000, nkb = (K + 31) / 32;
  for (int tiles : {1, 2, 4})
    for (int warps : {1, 3, 8})
      for (int splits : {1, 2, 3, 8}) {
        if (splits > 1 && !hopper) continue;
        for (int64_t kpw : {int64_t{1}, int64_t{2}, (nkb + warps * splits - 1) / (warps * splits)}) {
          if (kpw * warps * splits < nkb) continue;  // a configuration must cover K
          cuda::SkinnyGemmConfig cfg{tiles, warps, splits, kpw};
          check({5, K, 77, at::kFloat, at::kFloat, false, &cfg});
          check({13, K, 77, kNone, at::kBFloat16, false, &cfg});
        }
      }
  // The launcher's own choice on gpt-small's shapes (the down projection takes the cluster path).
  for (int64_t M : {1, 2, 7, 8, 9, 16}) {
    check({M, 768, 2304, at::kFloat});
    check({M, 768, 3072, at::kFloat, kNone, true});
    check({M, 3072, 768, at::kFloat, at::kFloat});
    check({M, 768, 50304});
    check({M, 768, 50257});
  }
  const auto down = cuda::skinny_gemm_config(1, 768, 3072);
  std::printf("skinny_gemm_config 3072x768 -> 768: tiles %d warps %d splits %d kpw %ld\n", down.tiles, down.warps,
              down.splits, (long)down.kpw);
  if (hopper) CHECK(down.splits > 1);
#endif
}

TEST_CASE("skinny matmul falls back to at::linear where it cannot run: K % 8, gradients, LINEARNEXUS_UNFUSED, fp32",
          "[gpu]") {
  if (!at::hasCUDA()) LN_SKIP("no CUDA device in this LibTorch/machine");
#ifdef LINEARNEXUS_WITH_CUDA
  torch::manual_seed(13);
  auto o = at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16);
  auto x = at::randn({3, 100}, o), w = at::randn({50, 100}, o), b = at::randn({50}, o);
  CHECK_FALSE(cuda::skinny_linear_applies(x, w, b, at::Tensor()));  // K = 100: not a multiple of 8
  CHECK(torch::equal(linear_forward(x, w, b), at::linear(x, w, b)));
  auto x8 = at::randn({3, 96}, o), w8 = at::randn({50, 96}, o);
  CHECK(cuda::skinny_linear_applies(x8, w8, at::Tensor(), at::Tensor()));
  CHECK_FALSE(cuda::skinny_linear_applies(at::randn({17, 96}, o), w8, at::Tensor(), at::Tensor()));  // 17 rows
  CHECK_FALSE(cuda::skinny_linear_applies(x8, w8.to(at::kFloat), at::Tensor(), at::Tensor()));       // fp32 weight
  CHECK_FALSE(cuda::skinny_linear_applies(x8.to(at::kFloat), w8, at::Tensor(), at::Tensor()));  // fp32 x, no autocast
  {
    compat::AutocastGuard autocast(true, at::kBFloat16);
    CHECK(cuda::skinny_linear_applies(x8.to(at::kFloat), w8, at::Tensor(), at::Tensor()));
  }
  auto wg = w8.clone().requires_grad_(true);
  CHECK_FALSE(cuda::skinny_linear_applies(x8, wg, at::Tensor(), at::Tensor()));  // training: autograd's path
  auto y = linear_forward(x8, wg);
  y.to(at::kFloat).sum().backward();
  CHECK(wg.grad().defined());
  {
    torch::NoGradGuard no_grad;
    CHECK(cuda::skinny_linear_applies(x8, wg, at::Tensor(), at::Tensor()));
  }
  ::setenv("LINEARNEXUS_UNFUSED", "1", 1);
  CHECK_FALSE(cuda::skinny_linear_applies(x8, w8, at::Tensor(), at::Tensor()));
  ::unsetenv("LINEARNEXUS_UNFUSED");
  // An unaligned view of x (offset by one element) is copied, not refused.
  auto wide = at::randn({3, 97}, o);
  auto view = wide.narrow(1, 1, 96);
  CHECK(lntest::rel_error(cuda::skinny_linear(view, w8, at::Tensor(), at::Tensor()),
                          at::linear(view.to(at::kFloat), w8.to(at::kFloat))) < 4e-3);
#endif
}

TEST_CASE("linear_forward and the MLP in a bf16 decode step (no grad, autocast) equal the plain ops", "[gpu]") {
  if (!at::hasCUDA()) LN_SKIP("no CUDA device in this LibTorch/machine");
#ifdef LINEARNEXUS_WITH_CUDA
  torch::manual_seed(14);
  torch::NoGradGuard no_grad;
  for (const char* kind : {"gelu", "swiglu"})
    for (bool bias : {false, true}) {
      INFO("mlp " << kind << " bias " << bias);
      MLP mlp(768, kind, 0, 12, bias);
      mlp.to(at::kCUDA, at::kBFloat16);  // the generator's replica holds bf16 Linear weights
      if (bias)
        for (auto& p : mlp.named_parameters())
          if (p.key().find("bias") != std::string::npos) p.value().normal_(0, 0.1);
      for (int64_t B : {1, 5, 16}) {
        auto x = at::randn({B, 1, 768}, at::TensorOptions().device(at::kCUDA));  // the fp32 residual stream
        auto xn = x.to(at::kBFloat16);
        compat::AutocastGuard autocast(true, at::kBFloat16);
        auto fused = mlp.forward_add(xn, x);
        ::setenv("LINEARNEXUS_UNFUSED", "1", 1);
        auto plain = x + mlp.forward(xn);
        ::unsetenv("LINEARNEXUS_UNFUSED");
        CHECK(fused.scalar_type() == at::kFloat);
        CHECK(lntest::rel_error(fused - x, plain - x) < 2e-2);
        auto q = linear_forward(mlp.up, xn);
        ::setenv("LINEARNEXUS_UNFUSED", "1", 1);
        auto q_plain = linear_forward(mlp.up, xn);
        ::unsetenv("LINEARNEXUS_UNFUSED");
        CHECK(lntest::rel_error(q, q_plain) < 1e-2);
      }
    }
#endif
}
