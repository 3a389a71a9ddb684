// The CUDA selective scan (selective_scan.cu, selective_scan_bwd.cu through selective_scan_gpu.cpp)
// against the sequential reference in float64 on the CPU: the gated output, the final state and the
// gradient of every input (u, dt, dt_bias, A, B, C, D, z, s0), at T = 1 .. 4096 (whole and partial
// backward chunks) and B = 1, T = 16384, d_state 1, 5, 16, 64, 133 / 70 channels (not a whole
// number of blocks), fp32 and bf16; the block's fused training node (mamba_inner_gpu.cpp) == its
// plain-op path; prefill's state == recurrent decoding's; one jamba-small bf16 training step == the
// same step through the unfused (chunk) scan. CTest label `gpu`: skips without CUDA.
#include <cmath>
#include <cstdio>
#include <map>

#include "catch.h"
#include "linearnexus/layers.h"
#include "linearnexus/model.h"
#include "linearnexus/host/plugin_host.h"
#include "linearnexus/registry.h"
#include "linearnexus/loss.h"
#include "selective_scan.h"
#include "selective_scan_gpu.h"
#include "gpu_test_util.h"
#include "test_util.h"

using namespace linearnexus;
using namespace lntest;

namespace {

// The scan's inputs as float64 CPU leaves. Bm, Cm are views into one [B, T, 2N + 3] tensor and z
// the second half of a [B, T, 2D] one, strided as the block's x_proj / in_proj outputs are.
struct Inputs {
  at::Tensor u, dt, bias, A, Bm, Cm, Dskip, z, s0;
  std::vector<at::Tensor*> all() { return {&u, &dt, &bias, &A, &Bm, &Cm, &Dskip, &z, &s0}; }
};

Inputs random_inputs(int64_t B, int64_t T, int64_t D, int64_t N) {
  auto o = at::TensorOptions().dtype(at::kDouble);
  Inputs in;
  in.u = at::randn({B, T, D}, o);
  in.dt = at::randn({B, T, D}, o) * 0.5;
  in.bias = at::randn({D}, o) * 0.5 - 2.5;  // delta = softplus(dt + bias): mostly 0.01 - 0.3
  in.A = -(at::randn({D, N}, o) * 0.3).exp() * at::arange(1, N + 1, o);
  auto bc = at::randn({B, T, 2 * N + 3}, o);
  in.Bm = bc.narrow(2, 3, N);
  in.Cm = bc.narrow(2, 3 + N, N);
  in.Dskip = at::randn({D}, o);
  in.z = at::randn({B, T, 2 * D}, o).narrow(2, D, D);
  in.s0 = at::randn({B, D, N}, o) * 0.5;
  return in;
}

// The inputs rounded as the kernel sees them (u, dt, z, B, C in `dtype`; the rest fp32), as
// float64 leaves: the reference's exact inputs.
Inputs rounded(const Inputs& in, at::ScalarType dtype) {
  Inputs r = in;
  for (auto* t : r.all()) {
    const bool same = t == &r.u || t == &r.dt || t == &r.z || t == &r.Bm || t == &r.Cm;
    *t = t->to(same ? dtype : at::kFloat).to(at::kDouble).detach().requires_grad_(true);
  }
  return r;
}

// The reference: softplus, the sequential scan, the D skip and the gate as plain ops.
mamba::GatedScanResult reference(const Inputs& in) {
  auto delta = at::softplus(in.dt + in.bias);
  auto r = mamba::scan_sequential(in.u, delta, in.A, in.Bm, in.Cm, in.s0);
  return {(r.y + in.u * in.Dskip) * at::silu(in.z), r.state};
}

// Checks the kernel against the reference at one size and dtype: outputs, final state, and the
// gradients of a loss weighting both at random.
void check_kernel(int64_t B, int64_t T, int64_t D, int64_t N, at::ScalarType dtype) {
  const double tol = dtype == at::kFloat ? 1e-4 : 1e-2;
  INFO("B " << B << " T " << T << " D " << D << " N " << N << " dtype " << (dtype == at::kFloat ? "fp32" : "bf16"));
  torch::manual_seed(1000 * T + N);
  Inputs base = random_inputs(B, T, D, N);
  Inputs ref = rounded(base, dtype);
  auto wout = at::randn({B, T, D}, at::kDouble).to(dtype).to(at::kDouble), wstate = at::randn({B, D, N}, at::kDouble);
  auto r = reference(ref);
  ((r.out * wout).sum() + (r.state * wstate).sum()).backward();

  // The same values on the GPU, each a leaf in its kernel dtype (u, dt, z, B, C: `dtype`).
  auto cuda = [&](const at::Tensor& t, at::ScalarType st) { return t.detach().to(at::kCUDA, st).requires_grad_(true); };
  auto bc = at::empty({B, T, 2 * N + 3}, at::TensorOptions().dtype(dtype).device(at::kCUDA)).normal_();
  bc.narrow(2, 3, N).copy_(ref.Bm.detach());
  bc.narrow(2, 3 + N, N).copy_(ref.Cm.detach());
  bc.requires_grad_(true);
  auto zz = at::empty({B, T, 2 * D}, bc.options()).normal_();
  zz.narrow(2, D, D).copy_(ref.z.detach());
  zz.requires_grad_(true);
  auto u = cuda(ref.u, dtype), dt = cuda(ref.dt, dtype), bias = cuda(ref.bias, at::kFloat), A = cuda(ref.A, at::kFloat),
       Dskip = cuda(ref.Dskip, at::kFloat), s0 = cuda(ref.s0, at::kFloat);
  auto k = mamba::scan_gated_cuda(u, dt, bias, true, A, bc.narrow(2, 3, N), bc.narrow(2, 3 + N, N), Dskip,
                                  zz.narrow(2, D, D), s0);
  REQUIRE(k.out.scalar_type() == dtype);
  REQUIRE(k.state.scalar_type() == at::kFloat);
  ((k.out.to(at::kDouble) * wout.to(at::kCUDA)).sum() + (k.state.to(at::kDouble) * wstate.to(at::kCUDA)).sum())
      .backward();
  CHECK(torch::isfinite(k.out).all().item<bool>());
  const double eo = rel_error(k.out, r.out), es = rel_error(k.state, r.state);
  std::printf("gpu-scan T %5lld N %2lld %s: out %.1e state %.1e", static_cast<long long>(T), static_cast<long long>(N),
              dtype == at::kFloat ? "fp32" : "bf16", eo, es);
  CHECK(eo < tol);
  CHECK(es < tol);
  const std::vector<std::pair<std::string, std::pair<at::Tensor, at::Tensor>>> grads = {
      {"u", {u.grad(), ref.u.grad()}},
      {"dt", {dt.grad(), ref.dt.grad()}},
      {"dt_bias", {bias.grad(), ref.bias.grad()}},
      {"A", {A.grad(), ref.A.grad()}},
      {"B", {bc.grad().narrow(2, 3, N), ref.Bm.grad()}},
      {"C", {bc.grad().narrow(2, 3 + N, N), ref.Cm.grad()}},
      {"D", {Dskip.grad(), ref.Dskip.grad()}},
      {"z", {zz.grad().narrow(2, D, D), ref.z.grad()}},
      {"s0", {s0.grad(), ref.s0.grad()}}};
  for (const auto& [name, g] : grads) {
    INFO("gradient of " << name);
    REQUIRE(g.first.defined());
    REQUIRE(g.second.defined());
    const double e = rel_error(g.first, g.second);
    std::printf(" d%s %.1e", name.c_str(), e);
    CHECK(e < tol);
  }
  // The columns of B, C and z that are not operands got no gradient.
  CHECK(bc.grad().narrow(2, 0, 3).abs().max().item<double>() == 0.0);
  CHECK(zz.grad().narrow(2, 0, D).abs().max().item<double>() == 0.0);
  std::printf("\n");
}

// A mamba block of width C (d_inner 2C) on CUDA with the schema's defaults overridden by `kv`.
std::shared_ptr<Block> make_mamba(PluginHost& host, int64_t C, const std::map<std::string, std::string>& kv) {
  auto b = make_test_block(host, "mamba", C, kv);
  b->to(at::kCUDA);
  return b;
}

BlockOutput run(Block& b, const at::Tensor& x, LayerState s, Mode mode, int64_t start = 0) {
  ForwardContext ctx;
  ctx.mode = mode;
  ctx.start = start;
  return b.forward(x, std::move(s), ctx);
}

}  // namespace

TEST_CASE("cuda selective scan == sequential reference: outputs, state and every gradient (fp32, bf16)", "[gpu]") {
  LN_SKIP_WITHOUT_CUDA();
  // The backward's chunks are 64 tokens in 8-token segments: T = 7, 37, 1000 end inside a chunk
  // (1000: 15 whole chunks, then 5 segments); N = 1, 5, 16, 64: one state, a partial pass, mamba's
  // size and the largest (shared memory past the default 48 KB).
  for (at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
    for (int64_t N : {1, 16})
      for (int64_t T : {1, 7, 37, 1000, 1024, 4096}) check_kernel(2, T, 133, N, dtype);
    for (int64_t N : {5, 64}) check_kernel(2, 200, 70, N, dtype);
  }
}

TEST_CASE("cuda selective scan, one long sequence: B = 1, T = 16384 (fp32, bf16)", "[gpu]") {
  LN_SKIP_WITHOUT_CUDA();
  for (at::ScalarType dtype : {at::kFloat, at::kBFloat16}) check_kernel(1, 16384, 133, 16, dtype);
}

TEST_CASE("cuda selective scan: no softplus, no gate, no initial state (the padding path's form)", "[gpu]") {
  LN_SKIP_WITHOUT_CUDA();
  torch::manual_seed(5);
  const int64_t B = 3, T = 100, D = 40, N = 16;
  Inputs in = random_inputs(B, T, D, N);
  auto delta = at::softplus(in.dt + in.bias).detach().requires_grad_(true);
  auto u = in.u.detach().requires_grad_(true), A = in.A.detach().requires_grad_(true);
  auto r = mamba::scan_sequential(u, delta, A, in.Bm, in.Cm, at::zeros({B, D, N}, at::kDouble));
  auto k = mamba::scan_gated_cuda(u.to(at::kCUDA, at::kFloat), delta.to(at::kCUDA, at::kFloat), at::Tensor(), false,
                                  A.to(at::kCUDA, at::kFloat), in.Bm.to(at::kCUDA, at::kFloat),
                                  in.Cm.to(at::kCUDA, at::kFloat), at::Tensor(), at::Tensor(), at::Tensor());
  CHECK(rel_error(k.out, r.y) < 1e-4);
  CHECK(rel_error(k.state, r.state) < 1e-4);
  // Both sides' gradients land in the same float64 CPU leaves (through .to()): kernel's first.
  auto w = at::randn({B, T, D}, at::kDouble);
  (k.out.to(at::kDouble) * w.to(at::kCUDA)).sum().backward();
  auto gu = u.grad().clone(), gd = delta.grad().clone(), gA = A.grad().clone();
  u.grad().zero_(), delta.grad().zero_(), A.grad().zero_();
  (r.y * w).sum().backward();
  CHECK(rel_error(gu, u.grad()) < 1e-4);
  CHECK(rel_error(gd, delta.grad()) < 1e-4);
  CHECK(rel_error(gA, A.grad()) < 1e-4);
}

TEST_CASE("cuda mamba block: prefill's output and final state == recurrent decoding's, from zero and carried",
          "[gpu]") {
  LN_SKIP_WITHOUT_CUDA();
  PluginHost host;
  torch::manual_seed(6);
  auto b = make_mamba(host, 40, {{"dt_max", "0.5"}});  // d_inner 80: 3 blocks of 32 channels, the last partial
  b->eval();
  torch::NoGradGuard g;
  const int64_t B = 3, T = 70;
  auto x = torch::randn({B, T, 40}, at::TensorOptions().device(at::kCUDA));
  LayerState s = b->init_state(B, T, x.options());
  std::vector<at::Tensor> ys;
  for (int64_t t = 0; t < T; ++t) {
    auto o = run(*b, x.narrow(1, t, 1), std::move(s), Mode::Decode, t);
    ys.push_back(o.y);
    s = std::move(o.state);
  }
  auto rec = at::cat(ys, 1);
  auto p = run(*b, x, b->init_state(B, T, x.options()), Mode::Prefill);
  std::printf("gpu-prefill out %.1e ssm_state %.1e\n", rel_error(p.y, rec),
              rel_error(p.state.tensors.at("ssm_state"), s.tensors.at("ssm_state")));
  CHECK(rel_error(p.y, rec) < 1e-5);
  CHECK(rel_error(p.state.tensors.at("ssm_state"), s.tensors.at("ssm_state")) < 1e-5);
  // (One token's in_proj and the whole prompt's are different matmuls: equal up to rounding.)
  CHECK(rel_error(p.state.tensors.at("conv_state"), s.tensors.at("conv_state")) < 1e-5);
  // Two prefill pieces (the second continues the first's state) == one.
  auto p1 = run(*b, x.narrow(1, 0, 23), b->init_state(B, T, x.options()), Mode::Prefill);
  auto p2 = run(*b, x.narrow(1, 23, T - 23), std::move(p1.state), Mode::Prefill, 23);
  CHECK(rel_error(at::cat({p1.y, p2.y}, 1), rec) < 1e-5);
  CHECK(rel_error(p2.state.tensors.at("ssm_state"), s.tensors.at("ssm_state")) < 1e-5);
}

TEST_CASE("cuda mamba block, training: the fused inner node == the chunk scan on plain ops (fp32, every gradient)",
          "[gpu]") {
  LN_SKIP_WITHOUT_CUDA();
  PluginHost host;
  torch::manual_seed(9);
  // d_inner 80: 3 backward blocks of 32 channels, the last partial; T = 100: a partial second chunk.
  auto fused = make_mamba(host, 40, {{"dt_max", "0.5"}});
  auto plain = make_mamba(host, 40, {{"dt_max", "0.5"}, {"scan", "chunk"}});
  {
    torch::NoGradGuard g;
    auto src = fused->named_parameters();
    for (auto& kv : plain->named_parameters()) kv.value().copy_(src[kv.key()]);
  }
  fused->train();
  plain->train();
  const int64_t B = 2, T = 100;
  auto x0 = torch::randn({B, T, 40}, at::TensorOptions().device(at::kCUDA));
  auto w = torch::randn({B, T, 40}, x0.options());
  auto xf = x0.clone().requires_grad_(true), xp = x0.clone().requires_grad_(true);
  auto yf = run(*fused, xf, LayerState(), Mode::Train).y, yp = run(*plain, xp, LayerState(), Mode::Train).y;
  const double ey = rel_error(yf, yp);
  CHECK(ey < 1e-5);
  (yf * w).sum().backward();
  (yp * w).sum().backward();
  const double ex = rel_error(xf.grad(), xp.grad());
  std::printf("gpu-inner y %.1e dx %.1e", ey, ex);
  CHECK(ex < 1e-4);
  auto src = plain->named_parameters();
  for (auto& kv : fused->named_parameters()) {
    INFO("parameter " << kv.key());
    const auto &gf = kv.value().grad(), &gp = src[kv.key()].grad();
    REQUIRE(gf.defined());
    REQUIRE(gp.defined());
    const double e = rel_error(gf, gp);
    std::printf(" %s %.1e", kv.key().c_str(), e);
    CHECK(e < 1e-4);
  }
  std::printf("\n");
}

TEST_CASE("cuda jamba-small bf16 training step: fused kernel == unfused chunk scan (loss and every gradient)",
          "[gpu]") {
  LN_SKIP_WITHOUT_CUDA();
  PluginHost host;
  auto make = [&](const std::string& scan) {
    Experiment e = parse_experiment(
        "data: {path: \"builtin:arithmetic\"}\nmodel: {preset: jamba-small, blocks: {mamba: {scan: " + scan + "}}}\n",
        "test.yaml", "", {}, host);
    torch::manual_seed(7);
    auto m = std::make_shared<LMModel>(e.model_config(50257), host.registry());
    m->to(at::kCUDA);
    m->set_compute_dtype(at::kBFloat16);
    m->train();
    return m;
  };
  auto fused = make("auto"), unfused = make("chunk");
  {
    torch::NoGradGuard g;
    auto src = unfused->named_parameters();
    for (auto& kv : fused->named_parameters()) REQUIRE(torch::equal(kv.value(), src[kv.key()]));
  }
  auto o = at::TensorOptions().dtype(at::kLong).device(at::kCUDA);
  auto x = at::randint(0, 50257, {2, 256}, o), y = at::randint(0, 50257, {2, 256}, o);
  auto lf = lm_loss(fused->forward(x), y), lu = lm_loss(unfused->forward(x), y);
  lf.backward();
  lu.backward();
  const double a = lf.item<double>(), b = lu.item<double>();
  std::printf("gpu-jamba loss fused %.6f unfused %.6f\n", a, b);
  CHECK(std::fabs(a - b) < 2e-3 * std::fabs(b));
  auto src = unfused->named_parameters();
  double worst = 0;
  std::string worst_name;
  for (auto& kv : fused->named_parameters()) {
    INFO("parameter " << kv.key());
    const auto &gf = kv.value().grad(), &gu = src[kv.key()].grad();
    REQUIRE(gf.defined());
    REQUIRE(gu.defined());
    const double e = rel_error(gf, gu);
    if (e > worst) worst = e, worst_name = kv.key();
    CHECK(e < 5e-2);
  }
  std::printf("gpu-jamba largest gradient difference: %.1e (%s)\n", worst, worst_name.c_str());
}

TEST_CASE("cuda conv step == the causal depthwise conv + silu on the carried history (fp32, bf16)", "[gpu]") {
  if (!at::hasCUDA()) LN_SKIP("no CUDA device in this LibTorch/machine");
  torch::manual_seed(4);
  for (auto dtype : {at::kFloat, at::kBFloat16}) {
    INFO("dtype " << dtype);
    const int64_t B = 3, D = 40, K = 4;
    auto o = at::TensorOptions().device(at::kCUDA).dtype(dtype);
    auto xz = at::randn({B, 1, 2 * D}, o);
    auto x = xz.narrow(-1, 0, D);  // strided rows, as the block passes it
    auto w = at::randn({D, K}, at::kCUDA), b = at::randn({D}, at::kCUDA);
    auto state = at::randn({B, D, K - 1}, o);
    at::Tensor want_history;
    auto want = at::silu(causal_depthwise_conv1d(x.to(at::kFloat), w, b, state.to(at::kFloat), &want_history));
    auto got = mamba::conv_step_cuda(x, state, w, b);
    // bf16: one rounding of outputs up to ~5 in magnitude (the GPU run of 2026-11-30 saw 0.025 absolute
    // against an absolute bound of 0.02), so the bound is relative.
    const double tol = dtype == at::kFloat ? 1e-5 : 1e-2;
    CHECK(((got.to(at::kFloat) - want).abs() / (want.abs() + 1.0)).max().item<double>() < tol);
    CHECK((state.to(at::kFloat) - want_history).abs().max().item<double>() < tol);  // the state moved on in place
    CHECK(at::equal(state.select(2, K - 2), x.squeeze(1)));  // its newest column is the input itself
  }
}
