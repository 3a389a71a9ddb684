// The CUDA SSD chunk kernels (ssd_chunk.cu, ssd_chunk_bwd.cu through ssd_chunk_gpu.cpp) against core's
// tensor-op chunked scan (decay_scan_chunked, fp32, with B and C expanded to every head): outputs, the
// final state and the gradients of x, B, C, dt, g and s0, fp32 and bf16, T not a multiple of the chunk
// (150, 5, 64), B = 1 with T = 16384, d_state 64 and 128, head_dim 32 / 64 / 96, with and without s0.
// x, B and C reach the kernel as strided views of one [B, T, H P + 2 G N] tensor, as mamba2's xBC.
// The kernels take bf16 matmul operands even for fp32 inputs, so both dtypes are held to bf16-level
// tolerances (the CPU emulator, emu/run.sh, measured <= 3.8e-3 at T 150, 7.8e-3 for dg at T 5).
// CTest label `gpu`: skips without CUDA.
// STATUS: written without a GPU; never run.
#include <cstdio>
#include <string>
#include <vector>

#include "catch.h"
#include "gpu_test_util.h"
#include "linearnexus/chunked_scan.h"
#include "ssd_chunk_gpu.h"

using namespace linearnexus;
using namespace lntest;

namespace {

struct Case {
  int64_t B, T, H, G, N, P;
  at::ScalarType dtype;
  bool s0;
  std::string decay;  // mamba2 (dt 1e-3 .. 0.1, A 1 .. 16) | strong (dt 0.5 .. 1.5) | weak (g ~ -1e-5)
};

void check(const Case& c) {
  const auto [B, T, H, G, N, P, dtype, with_s0, decay] = c;
  INFO("B " << B << " T " << T << " H " << H << " G " << G << " N " << N << " P " << P << " "
            << (dtype == at::kFloat ? "fp32" : "bf16") << " s0 " << with_s0 << " decay " << decay);
  at::manual_seed(T * 7 + N + P);
  const auto f = at::TensorOptions().dtype(at::kFloat).device(at::kCUDA);
  // The inputs as the kernel sees them (x, B, C rounded to `dtype`), fp32 leaves.
  auto leaf = [&](at::Tensor t) { return t.to(dtype).to(at::kFloat).detach().requires_grad_(true); };
  auto x = leaf(at::randn({B, T, H, P}, f)), Bm = leaf(at::randn({B, T, G, N}, f)),
       Cm = leaf(at::randn({B, T, G, N}, f));
  auto A = decay == "weak" ? at::rand({H}, f) * 1e-4 + 1e-5 : at::rand({H}, f) * 15 + 1;
  auto dt = decay == "strong" ? at::rand({B, T, H}, f) + 0.5 : (at::rand({B, T, H}, f) * 4.6 - 6.9).exp();
  if (decay == "weak") dt = at::rand({B, T, H}, f) + 0.05;
  dt = dt.detach().requires_grad_(true);
  auto g = (-(dt.detach() * A)).requires_grad_(true);  // a leaf of its own: dg is checked by itself
  auto s0 = with_s0 ? (at::randn({B, H, N, P}, f) * 0.5).requires_grad_(true) : at::Tensor();
  auto wy = at::randn({B, T, H, P}, f).to(dtype).to(at::kFloat), ws = at::randn({B, H, N, P}, f);

  // Reference: decay_scan_chunked on [B, H, T, .] with B, C expanded per head and k = dt B.
  auto heads = [&](const at::Tensor& t) { return t.transpose(1, 2).repeat_interleave(H / G, 1); };
  auto Sref = with_s0 ? s0 : at::Tensor();
  auto yref = decay_scan_chunked(heads(Cm), heads(Bm) * dt.transpose(1, 2).unsqueeze(-1), x.transpose(1, 2),
                                 g.transpose(1, 2).unsqueeze(-1), Sref, 64)
                  .transpose(1, 2);
  ((yref * wy).sum() + (Sref * ws).sum()).backward();
  std::vector<at::Tensor> ref_grads{x.grad().clone(),  Bm.grad().clone(), Cm.grad().clone(),
                                    dt.grad().clone(), g.grad().clone(),  with_s0 ? s0.grad().clone() : at::Tensor()};
  for (auto* t : {&x, &Bm, &Cm, &dt, &g}) t->mutable_grad() = at::Tensor();
  if (with_s0) s0.mutable_grad() = at::Tensor();

  // The kernel, on strided views of one [B, T, H P + 2 G N] tensor in `dtype`.
  auto xbc = at::cat({x.flatten(2), Bm.flatten(2), Cm.flatten(2)}, 2).to(dtype);
  auto xv = xbc.narrow(2, 0, H * P).view({B, T, H, P});
  auto Bv = xbc.narrow(2, H * P, G * N).view({B, T, G, N}), Cv = xbc.narrow(2, H * P + G * N, G * N).view({B, T, G, N});
  REQUIRE(mamba2::ssd_cuda_applies(xv, N, P));
  auto k = mamba2::ssd_chunk_cuda(xv, dt, Bv, Cv, g, s0);
  REQUIRE(k.y.scalar_type() == dtype);
  REQUIRE(k.state.scalar_type() == at::kFloat);
  CHECK(at::isfinite(k.y).all().item<bool>());
  ((k.y.to(at::kFloat) * wy).sum() + (k.state * ws).sum()).backward();
  const double ey = rel_error(k.y, yref), es = rel_error(k.state, Sref);
  std::printf("ssd T %5lld N %3lld P %3lld %s s0 %d %-6s: y %.1e state %.1e", static_cast<long long>(T),
              static_cast<long long>(N), static_cast<long long>(P), dtype == at::kFloat ? "fp32" : "bf16", with_s0,
              decay.c_str(), ey, es);
  CHECK(ey < 1e-2);
  CHECK(es < 1e-2);
  const char* names[] = {"x", "B", "C", "dt", "g", "s0"};
  std::vector<at::Tensor> got{x.grad(), Bm.grad(), Cm.grad(), dt.grad(), g.grad(), with_s0 ? s0.grad() : at::Tensor()};
  for (int i = 0; i < 6; ++i) {
    if (i == 5 && !with_s0) continue;
    INFO("gradient of " << names[i]);
    REQUIRE(got[i].defined());
    const double e = rel_error(got[i], ref_grads[i]);
    std::printf(" d%s %.1e", names[i], e);
    CHECK(e < 1.5e-2);
  }
  std::printf("\n");
}

}  // namespace

TEST_CASE("cuda SSD chunk kernels == decay_scan_chunked: outputs, state, every gradient (T 150, fp32, bf16)", "[gpu]") {
  LN_SKIP_WITHOUT_CUDA();
  for (const int64_t N : {64, 128})
    for (const auto dtype : {at::kFloat, at::kBFloat16})
      for (const bool s0 : {true, false})
        for (const std::string decay : {"mamba2", "strong", "weak"}) check({2, 150, 4, 2, N, 64, dtype, s0, decay});
}

TEST_CASE("cuda SSD chunk kernels, one long sequence: B = 1, T = 16384 (fp32, bf16)", "[gpu]") {
  LN_SKIP_WITHOUT_CUDA();
  for (const auto dtype : {at::kFloat, at::kBFloat16}) check({1, 16384, 4, 1, 128, 64, dtype, true, "mamba2"});
}

TEST_CASE("cuda SSD chunk kernels: T shorter than a chunk and exactly one, head_dim 32 and 96, a group per head",
          "[gpu]") {
  LN_SKIP_WITHOUT_CUDA();
  check({1, 5, 2, 2, 128, 32, at::kFloat, true, "strong"});
  check({2, 64, 4, 4, 64, 96, at::kBFloat16, false, "mamba2"});
  check({1, 200, 6, 3, 64, 32, at::kBFloat16, true, "weak"});
}
