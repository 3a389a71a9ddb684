// core's fused CUDA kernels against the plain LibTorch ops they replace: outputs and gradients, fp32
// and bf16, odd sizes, a vocabulary that is not a multiple of 64, T = 1, rows without loss, several
// row chunks; and one whole bf16 gpt-small step against the unfused path. CTest label `gpu`: every
// case skips, saying so, without CUDA.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <functional>

#include <torch/csrc/autograd/function.h>

#include "catch.h"
#include "linearnexus/compat.h"
#include "linearnexus/layers.h"
#include "linearnexus/loss.h"
#include "linearnexus/model.h"
#include "linearnexus/optimizer.h"
#include "linearnexus/host/plugin_host.h"
#include "linearnexus/host/session.h"
#include "test_util.h"

using namespace linearnexus;
using namespace lntest;

namespace {

// ||a - b|| / ||b|| in fp64.
double rel_err(const at::Tensor& a, const at::Tensor& b) {
  auto a64 = a.detach().to(at::kDouble), b64 = b.detach().to(at::kDouble);
  return ((a64 - b64).norm() / b64.norm().clamp_min(1e-30)).item<double>();
}

// lm_head_loss on CUDA (compute_dtype) against cross_entropy of h @ W^T computed in the same dtype,
// with a scaled upstream gradient; prints the errors (the GPU log keeps them).
void check_head_loss(int64_t B, int64_t T, int64_t C, int64_t V, at::ScalarType dtype, double loss_tol,
                     double grad_tol) {
  INFO("B " << B << " T " << T << " C " << C << " V " << V << " dtype " << c10::toString(dtype));
  torch::manual_seed(3);
  auto o = at::TensorOptions().device(at::kCUDA);
  auto h = at::randn({B, T, C}, o).requires_grad_(true);
  auto W = (at::randn({V, C}, o) * 0.3).requires_grad_(true);
  auto targets = at::randint(V, {B, T}, o.dtype(at::kLong));
  targets.index_put_({0, 0}, -1);  // a position without loss
  auto h2 = h.detach().clone().requires_grad_(true), W2 = W.detach().clone().requires_grad_(true);
  auto fused = lm_head_loss(h, W, targets, dtype);
  auto reference = lm_loss(at::matmul(h2.to(dtype), W2.to(dtype).t()), targets);
  (fused * 2.5).backward();
  (reference * 2.5).backward();
  const double el = std::fabs(fused.item<double>() - reference.item<double>()) / std::fabs(reference.item<double>());
  const double eh = rel_err(h.grad(), h2.grad()), ew = rel_err(W.grad(), W2.grad());
  std::printf("lm_head_loss B %ld T %ld C %ld V %ld %-8s loss %.6f vs %.6f (rel %.1e)  grad_h %.1e  grad_W %.1e\n",
              (long)B, (long)T, (long)C, (long)V, c10::toString(dtype), fused.item<double>(), reference.item<double>(),
              el, eh, ew);
  CHECK(el < loss_tol);
  CHECK(eh < grad_tol);
  CHECK(ew < grad_tol);
  CHECK(h.grad()[0][0].abs().max().item<double>() == 0);  // no loss, no gradient
  CHECK(W.grad().scalar_type() == at::kFloat);
  torch::NoGradGuard g;  // without gradients: the value alone
  CHECK(std::fabs(lm_head_loss(h, W, targets, dtype).item<double>() - fused.item<double>()) < 1e-6);
}

// RMSNorm on CUDA (the fused kernels) against the plain ops in fp64, x in `x_dtype`, under bf16
// autocast or not; outputs and the gradients of x and the weight.
void check_rms_norm(int64_t rows, int64_t C, at::ScalarType x_dtype, bool autocast, double tol) {
  INFO("rows " << rows << " C " << C << " x " << c10::toString(x_dtype) << " autocast " << autocast);
  torch::manual_seed(4);
  RMSNorm norm(C);
  norm.to(at::kCUDA);
  {
    torch::NoGradGuard g;
    norm.weight.copy_(at::rand({C}) + 0.5);
  }
  auto x = (at::randn({rows, C}, at::TensorOptions().device(at::kCUDA)) * 3).to(x_dtype).requires_grad_(true);
  at::Tensor y;
  {
    compat::AutocastGuard guard(autocast, at::kBFloat16);
    y = norm.forward(x);
  }
  CHECK(y.scalar_type() == (autocast ? at::kBFloat16 : x_dtype));
  auto dy = at::randn({rows, C}, x.options().dtype(at::kFloat));
  y.backward(dy.to(y.scalar_type()));
  auto x64 = x.detach().to(at::kDouble).requires_grad_(true),
       w64 = norm.weight.detach().to(at::kDouble).requires_grad_(true);
  auto ref = x64 * at::rsqrt(x64.pow(2).mean(-1, true) + norm.eps) * w64;
  ref.backward(dy.to(y.scalar_type()).to(at::kDouble));
  const double ey = rel_err(y, ref), ex = rel_err(x.grad(), x64.grad()), ew = rel_err(norm.weight.grad(), w64.grad());
  std::printf("rms_norm rows %ld C %ld x %-8s autocast %d: y %.1e  dx %.1e  dw %.1e\n", (long)rows, (long)C,
              c10::toString(x_dtype), autocast, ey, ex, ew);
  CHECK(ey < tol);
  CHECK(ex < tol);
  CHECK(ew < tol);
}

// split_heads on CUDA (the fused split + RoPE kernels) against views of qkv and apply_rope. The
// vector kernel runs where (D/2) % (16 bytes / element size) == 0 and the tensors are 16-byte
// aligned, the scalar one otherwise: `misaligned` puts qkv 2 or 4 bytes off (its forward then takes
// the scalar kernel, its backward, into a fresh dqkv, the vector one); `rope` false: the split alone.
void check_split_heads(int64_t B, int64_t T, int64_t H, int64_t Hkv, int64_t D, bool per_row_positions,
                       at::ScalarType dtype, double tol, bool rope = true, bool misaligned = false) {
  INFO("B " << B << " T " << T << " H " << H << " Hkv " << Hkv << " D " << D << " " << c10::toString(dtype) << " rope "
            << rope << " misaligned " << misaligned);
  torch::manual_seed(5);
  auto o = at::TensorOptions().device(at::kCUDA);
  const int64_t W = (H + 2 * Hkv) * D;
  auto qkv = misaligned ? at::randn({B * T * W + 1}, o).to(dtype).narrow(0, 1, B * T * W).view({B, T, W})
                        : at::randn({B, T, W}, o).to(dtype);
  qkv.requires_grad_(true);
  auto pos = per_row_positions ? at::randint(0, 4000, {B, T}, o.dtype(at::kLong))
                               : at::arange(7, 7 + T, o.dtype(at::kLong)).unsqueeze(0);
  auto fused = split_heads(qkv, pos, H, Hkv, D, rope, 10000.0);
  auto qkv2 = qkv.detach().clone().requires_grad_(true);
  auto q = qkv2.narrow(-1, 0, H * D).view({B, T, H, D}).transpose(1, 2);
  auto k = qkv2.narrow(-1, H * D, Hkv * D).view({B, T, Hkv, D}).transpose(1, 2);
  auto v = qkv2.narrow(-1, (H + Hkv) * D, Hkv * D).view({B, T, Hkv, D}).transpose(1, 2);
  if (rope) q = apply_rope(q, pos, 10000.0), k = apply_rope(k, pos, 10000.0);
  // Token-major storage: [B, heads, T, D] views of contiguous [B, T, heads, D] (rope.cu).
  CHECK(fused.q.transpose(1, 2).is_contiguous());
  CHECK(fused.k.transpose(1, 2).is_contiguous());
  CHECK(fused.v.transpose(1, 2).is_contiguous());
  const double eq = rel_err(fused.q, q), ek = rel_err(fused.k, k), ev = rel_err(fused.v, v);
  auto gq = at::randn_like(q), gk = at::randn_like(k), gv = at::randn_like(v);
  ((fused.q * gq).sum() + (fused.k * gk).sum() + (fused.v * gv).sum()).backward();
  ((q * gq).sum() + (k * gk).sum() + (v * gv).sum()).backward();
  const double eg = rel_err(qkv.grad(), qkv2.grad());
  std::printf(
      "split_heads B %ld T %ld H %ld Hkv %ld D %ld %-8s rope %d misaligned %d: q %.1e  k %.1e  v %.1e  dqkv %.1e\n",
      (long)B, (long)T, (long)H, (long)Hkv, (long)D, c10::toString(dtype), rope, misaligned, eq, ek, ev, eg);
  CHECK(eq < tol);
  CHECK(ek < tol);
  CHECK(ev == 0);
  CHECK(eg < tol);
}

// MLP(kind) on CUDA (SwiGLU's gate through swiglu.cu; GELU in cuBLASLt's matmul epilogues,
// cuda/gelu_mlp_cuda.cpp) against the same modules as ops (`ops`), fp32 or under bf16 autocast: the
// output, the gradients of x and every weight (fp32 ones), and the forward without autograd against the
// one with it.
void check_mlp(const std::string& kind, int64_t rows, int64_t C, int64_t hidden, bool autocast, double tol,
               const std::function<at::Tensor(MLP&, const at::Tensor&)>& ops) {
  INFO(kind << " rows " << rows << " C " << C << " hidden " << hidden << " autocast " << autocast);
  torch::manual_seed(6);
  MLP mlp(C, kind, hidden, 2);
  mlp.to(at::kCUDA);
  auto x = at::randn({rows, C}, at::TensorOptions().device(at::kCUDA)).requires_grad_(true);
  auto x2 = x.detach().clone().requires_grad_(true);
  at::Tensor fused, ref, no_grad;
  {
    compat::AutocastGuard guard(autocast, at::kBFloat16);
    fused = mlp.forward(x);
    ref = ops(mlp, x2);
    torch::NoGradGuard g;
    no_grad = mlp.forward(x);
  }
  CHECK(fused.scalar_type() == ref.scalar_type());
  CHECK(fused.sizes() == ref.sizes());
  auto dout = at::randn_like(fused);
  fused.backward(dout);
  std::map<std::string, at::Tensor> grads;
  for (const auto& p : mlp.named_parameters())
    grads[p.key()] = p.value().grad().clone(), p.value().mutable_grad().reset();
  ref.backward(dout);
  double worst = rel_err(x.grad(), x2.grad());
  for (const auto& p : mlp.named_parameters()) {
    CHECK(grads[p.key()].scalar_type() == at::kFloat);
    worst = std::max(worst, rel_err(grads[p.key()], p.value().grad()));
  }
  const double eo = rel_err(fused, ref), en = rel_err(no_grad, fused);
  std::printf("%s mlp rows %ld C %ld hidden %ld autocast %d: out %.1e  largest gradient %.1e  no-grad out %.1e\n",
              kind.c_str(), (long)rows, (long)C, (long)hidden, autocast, eo, worst, en);
  CHECK(eo < tol);
  CHECK(worst < tol);
  CHECK(en < tol);
}

void check_swiglu(int64_t rows, int64_t C, int64_t hidden, bool autocast, double tol) {
  check_mlp("swiglu", rows, C, hidden, autocast, tol,
            [](MLP& m, const at::Tensor& x) { return m.down(at::silu(m.gate(x)) * m.up(x)); });
}

void check_gelu_mlp(int64_t rows, int64_t C, int64_t hidden, bool autocast, double tol) {
  check_mlp("gelu", rows, C, hidden, autocast, tol,
            [](MLP& m, const at::Tensor& x) { return m.down(at::gelu(m.up(x), "tanh")); });
}

// ResidualMLP on CUDA (x + y and ln2 in one kernel each way, residual_rms_norm.cu) against the same
// modules with LINEARNEXUS_UNFUSED=1 (the add, then RMSNorm as ops): out = h + mlp(ln2(h)) and the
// gradients of x, y and every parameter. x [1, rows, C] in x_dtype, y in y_dtype, bf16 autocast or not.
void check_residual_norm(int64_t rows, int64_t C, at::ScalarType x_dtype, at::ScalarType y_dtype, bool autocast,
                         double tol) {
  INFO("rows " << rows << " C " << C << " x " << c10::toString(x_dtype) << " y " << c10::toString(y_dtype)
               << " autocast " << autocast);
  torch::manual_seed(7);
  torch::nn::Module block;
  ModelDims dims;
  dims.hidden_size = C, dims.n_layer = 2;
  ResidualMLP tail(block, dims, "gelu", 0);
  block.to(at::kCUDA);
  {
    torch::NoGradGuard g;
    block.named_parameters()["ln2.weight"].copy_(at::rand({C}) + 0.5);
  }
  auto o = at::TensorOptions().device(at::kCUDA);
  auto x = (at::randn({1, rows, C}, o) * 2).to(x_dtype).requires_grad_(true);
  auto y = at::randn({1, rows, C}, o).to(y_dtype).requires_grad_(true);
  auto dout = at::randn({1, rows, C}, o);
  struct Run {
    at::Tensor out, dx, dy;
    std::map<std::string, at::Tensor> grads;
    bool fused_node = false;  // the add + norm node is in the graph
  };
  auto run = [&](bool unfused) {
    if (unfused) ::setenv("LINEARNEXUS_UNFUSED", "1", 1);
    Run r;
    {
      compat::AutocastGuard guard(autocast, at::kBFloat16);
      r.out = tail.forward(x, y, true);
    }
    // Fused: ResidualAdd(h, mlp(n)) with h from the ResidualRmsNorm node.
    const bool add_node = r.out.grad_fn()->name().find("ResidualAdd") != std::string::npos;
    for (const auto& e : r.out.grad_fn()->next_edges())
      if (add_node && e.function && e.function->name().find("ResidualRmsNorm") != std::string::npos)
        r.fused_node = true;
    r.out.backward(dout.to(r.out.scalar_type()));
    if (unfused) ::unsetenv("LINEARNEXUS_UNFUSED");
    r.dx = x.grad().clone(), r.dy = y.grad().clone();
    x.mutable_grad().reset(), y.mutable_grad().reset();
    for (const auto& p : block.named_parameters())
      r.grads[p.key()] = p.value().grad().clone(), p.value().mutable_grad().reset();
    return r;
  };
  const Run fused = run(false), plain = run(true);
  CHECK(fused.fused_node);
  CHECK(!plain.fused_node);
  CHECK(fused.out.scalar_type() == plain.out.scalar_type());
  CHECK(fused.dy.scalar_type() == y_dtype);
  double worst = std::max(rel_err(fused.dx, plain.dx), rel_err(fused.dy, plain.dy));
  for (const auto& kv : plain.grads) worst = std::max(worst, rel_err(fused.grads.at(kv.first), kv.second));
  const double eo = rel_err(fused.out, plain.out),
               ew = rel_err(fused.grads.at("ln2.weight"), plain.grads.at("ln2.weight"));
  std::printf(
      "residual + rms_norm rows %ld C %ld x %-8s y %-8s autocast %d: out %.1e  dln2 %.1e  largest gradient %.1e\n",
      (long)rows, (long)C, c10::toString(x_dtype), c10::toString(y_dtype), autocast, eo, ew, worst);
  CHECK(eo < tol);
  CHECK(worst < tol);
}

// RMSNorm::forward_residual on CUDA (one node returning x beside the norm; its backward adds the
// stream's gradient of x) against LINEARNEXUS_UNFUSED=1 ({x, forward(x)} as ops), through
// out = 0.5 s + 1.5 n: the output and the gradients of x and the weight.
void check_norm_residual(int64_t rows, int64_t C, at::ScalarType x_dtype, bool autocast, double tol) {
  INFO("rows " << rows << " C " << C << " x " << c10::toString(x_dtype) << " autocast " << autocast);
  torch::manual_seed(8);
  RMSNorm norm(C);
  norm.to(at::kCUDA);
  {
    torch::NoGradGuard g;
    norm.weight.copy_(at::rand({C}) + 0.5);
  }
  auto x = (at::randn({1, rows, C}, at::TensorOptions().device(at::kCUDA)) * 3).to(x_dtype).requires_grad_(true);
  auto dout = at::randn_like(x);
  auto run = [&](bool unfused, bool* fused_node) {
    if (unfused) ::setenv("LINEARNEXUS_UNFUSED", "1", 1);
    std::pair<at::Tensor, at::Tensor> sn;
    {
      compat::AutocastGuard guard(autocast, at::kBFloat16);
      sn = norm.forward_residual(x);
    }
    // The kernel writes autocast's dtype (the next matmul's input); the plain RMSNorm writes x's.
    if (!unfused) CHECK(sn.second.scalar_type() == (autocast ? at::kBFloat16 : x_dtype));
    // One node for both outputs (the fused one); the plain path returns x itself, a leaf.
    *fused_node = sn.first.grad_fn() && sn.first.grad_fn() == sn.second.grad_fn();
    auto out = sn.first * 0.5 + sn.second.to(x_dtype) * 1.5;
    out.backward(dout);
    if (unfused) ::unsetenv("LINEARNEXUS_UNFUSED");
    std::vector<at::Tensor> r{out.detach(), x.grad().clone(), norm.weight.grad().clone()};
    x.mutable_grad().reset(), norm.weight.mutable_grad().reset();
    return r;
  };
  bool fused_node = false, plain_node = false;
  const auto fused = run(false, &fused_node), plain = run(true, &plain_node);
  CHECK(fused_node);
  CHECK(!plain_node);
  const double eo = rel_err(fused[0], plain[0]), ex = rel_err(fused[1], plain[1]), ew = rel_err(fused[2], plain[2]);
  std::printf("rms_norm + residual gradient rows %ld C %ld x %-8s autocast %d: out %.1e  dx %.1e  dw %.1e\n",
              (long)rows, (long)C, c10::toString(x_dtype), autocast, eo, ex, ew);
  CHECK(eo < tol);
  CHECK(ex < tol);
  CHECK(ew < tol);
}

}  // namespace

TEST_CASE(
    "fused RMSNorm with its input's residual gradient on CUDA equals {x, RMSNorm(x)} as ops (fp32, bf16, autocast, odd C, one row)",
    "[gpu]") {
  if (!at::hasCUDA()) LN_SKIP("no CUDA device in this LibTorch/machine");
  check_norm_residual(37, 72, at::kFloat, false, 1e-5);
  check_norm_residual(1, 72, at::kFloat, false, 1e-5);
  check_norm_residual(4097, 768, at::kFloat, true, 1e-2);
  check_norm_residual(37, 2048, at::kFloat, false, 1e-5);
  check_norm_residual(37, 72, at::kBFloat16, true, 2e-2);
  check_norm_residual(37, 128, at::kFloat, false, 1e-5);    // the register kernel, fp32 throughout
  check_norm_residual(37, 256, at::kBFloat16, true, 2e-2);  // and bf16 throughout
}

TEST_CASE(
    "fused residual adds + RMSNorm on CUDA equal x + y, RMSNorm and h + mlp as ops (fp32, bf16, autocast, odd C, one row)",
    "[gpu]") {
  if (!at::hasCUDA()) LN_SKIP("no CUDA device in this LibTorch/machine");
  check_residual_norm(37, 72, at::kFloat, at::kFloat, false, 1e-5);
  check_residual_norm(1, 72, at::kFloat, at::kFloat, false, 1e-5);        // T = 1
  check_residual_norm(37, 72, at::kFloat, at::kBFloat16, false, 1e-5);    // fp32 stream, bf16 y: n in fp32
  check_residual_norm(4097, 768, at::kFloat, at::kBFloat16, true, 1e-2);  // gpt-small's case; > 1024 backward blocks
  check_residual_norm(37, 2048, at::kFloat, at::kFloat, false, 1e-5);     // the backward's larger shared memory
  check_residual_norm(37, 72, at::kBFloat16, at::kBFloat16, true, 2e-2);  // a bf16 residual stream
  // The backward's register kernel (C = 128 K, K <= 6; the cases above: 768 only) and the add's
  // scalar loop (37 x 71 values: not a multiple of 4).
  check_residual_norm(37, 128, at::kFloat, at::kFloat, false, 1e-5);
  check_residual_norm(37, 256, at::kBFloat16, at::kBFloat16, true, 2e-2);
  check_residual_norm(37, 71, at::kFloat, at::kBFloat16, false, 1e-5);
}

TEST_CASE("fused SwiGLU on CUDA equals silu(gate) * up as ops (fp32, bf16 autocast, odd width, one row)", "[gpu]") {
  if (!at::hasCUDA()) LN_SKIP("no CUDA device in this LibTorch/machine");
  check_swiglu(37, 64, 100, false, 1e-5);
  check_swiglu(1, 64, 100, false, 1e-5);
  check_swiglu(37, 768, 2048, true, 2e-2);
}

TEST_CASE(
    "GELU MLP on CUDA (cuBLASLt epilogues) equals down(gelu_tanh(up(x))) as ops (fp32, bf16 autocast, odd width, one row)",
    "[gpu]") {
  if (!at::hasCUDA()) LN_SKIP("no CUDA device in this LibTorch/machine");
  check_gelu_mlp(37, 64, 256, false, 1e-5);
  check_gelu_mlp(1, 64, 256, false, 1e-5);
  check_gelu_mlp(37, 64, 100, false, 1e-5);  // a width cuBLASLt may have no epilogue kernel for: the ops
  check_gelu_mlp(37, 768, 3072, true, 2e-2);
  check_gelu_mlp(2048, 768, 3072, true, 2e-2);  // gpt-small's layer at 2 x 1024 tokens
  check_gelu_mlp(1, 768, 3072, true, 2e-2);
}

TEST_CASE("fused RMSNorm on CUDA equals the plain ops (fp32, bf16, under autocast, odd C, one row)", "[gpu]") {
  if (!at::hasCUDA()) LN_SKIP("no CUDA device in this LibTorch/machine");
  check_rms_norm(111, 72, at::kFloat, false, 1e-5);
  check_rms_norm(1, 768, at::kFloat, false, 1e-5);
  check_rms_norm(4097, 768, at::kFloat, true, 1e-2);  // more rows than the backward's 1024 blocks
  check_rms_norm(37, 2048, at::kFloat, false, 1e-5);  // the backward's larger shared memory
  check_rms_norm(37, 72, at::kBFloat16, false, 1e-2);
  check_rms_norm(37, 72, at::kBFloat16, true, 1e-2);
}

TEST_CASE(
    "fused qkv split + RoPE on CUDA equals views + apply_rope (fp32, bf16, GQA, T = 1, per-row positions, vector and scalar kernels)",
    "[gpu]") {
  if (!at::hasCUDA()) LN_SKIP("no CUDA device in this LibTorch/machine");
  // fp32: the same angles as apply_rope's up to a few ulps (positions up to 4000).
  check_split_heads(2, 37, 4, 4, 16, false, at::kFloat, 5e-5);
  check_split_heads(3, 1, 6, 2, 64, true, at::kFloat, 5e-5);
  check_split_heads(2, 37, 4, 2, 64, true, at::kFloat, 5e-5);
  check_split_heads(2, 37, 12, 12, 64, false, at::kBFloat16, 2e-2);  // 74 tokens: a partial last block of 16
  check_split_heads(3, 1, 6, 2, 64, true, at::kBFloat16, 2e-2);      // T = 1
  // The scalar kernel: (D/2) % 8 != 0 in bf16, (D/2) % 4 != 0 in fp32, qkv not 16-byte aligned.
  check_split_heads(2, 37, 4, 2, 20, true, at::kBFloat16, 2e-2);
  check_split_heads(2, 37, 4, 4, 18, false, at::kFloat, 5e-5);
  check_split_heads(2, 37, 4, 2, 64, true, at::kBFloat16, 2e-2, true, true);
  check_split_heads(2, 37, 4, 2, 64, true, at::kFloat, 5e-5, true, true);
  // Without rope: the split alone, exact (vector and scalar kernels).
  check_split_heads(2, 37, 4, 2, 64, false, at::kBFloat16, 1e-12, false);
  check_split_heads(2, 37, 4, 2, 20, false, at::kBFloat16, 1e-12, false);
}

TEST_CASE("fused LM head + cross-entropy on CUDA equals matmul + cross_entropy (fp32, bf16, odd sizes, T = 1)",
          "[gpu]") {
  if (!at::hasCUDA()) LN_SKIP("no CUDA device in this LibTorch/machine");
  // V = 1000 and 50257: not multiples of 64 (padding columns); C = 72 odd; T = 1.
  check_head_loss(3, 37, 72, 1000, at::kFloat, 1e-5, 1e-4);
  check_head_loss(2, 1, 64, 50257, at::kFloat, 1e-5, 1e-4);
  check_head_loss(3, 37, 72, 1000, at::kBFloat16, 2e-3, 2e-2);
  check_head_loss(2, 1, 64, 50257, at::kBFloat16, 2e-3, 2e-2);  // one of the two rows without loss
  // 6000 rows at V = 50257 in fp32: two chunks of ~1 GiB of logits, the second partial.
  check_head_loss(2, 3000, 64, 50257, at::kFloat, 1e-5, 1e-4);
}

TEST_CASE("fused LM head + cross-entropy on CUDA: every target -1 gives loss 0 and zero gradients", "[gpu]") {
  if (!at::hasCUDA()) LN_SKIP("no CUDA device in this LibTorch/machine");
  auto o = at::TensorOptions().device(at::kCUDA);
  auto h = at::randn({2, 5, 32}, o).requires_grad_(true);
  auto W = at::randn({100, 32}, o).requires_grad_(true);
  auto loss = lm_head_loss(h, W, at::full({2, 5}, -1, o.dtype(at::kLong)), at::kBFloat16);
  loss.backward();
  CHECK(loss.item<double>() == 0);
  CHECK(h.grad().abs().max().item<double>() == 0);
  CHECK(W.grad().abs().max().item<double>() == 0);
}

TEST_CASE(
    "one bf16 gpt-small step: loss and gradients with every fused kernel equal the plain ops' (LINEARNEXUS_UNFUSED=1)",
    "[gpu]") {
  if (!at::hasCUDA()) LN_SKIP("no CUDA device in this LibTorch/machine");
  PluginHost host;
  Experiment e = parse("data: {path: \"builtin:arithmetic\"}\nmodel: {preset: gpt-small}\n", host);
  torch::manual_seed(0);
  LMModel model(e.model_config(50257), host.registry());
  model.to(at::kCUDA);
  model.set_compute_dtype(at::kBFloat16);
  auto o = at::TensorOptions().dtype(at::kLong).device(at::kCUDA);
  auto x = at::randint(0, 50257, {2, 128}, o), y = at::randint(0, 50257, {2, 128}, o);
  auto fused = model.next_token_loss(x, y);
  fused.backward();
  std::map<std::string, at::Tensor> grads;
  for (const auto& p : model.named_parameters())
    grads[p.key()] = p.value().grad().clone(), p.value().mutable_grad().reset();
  // The plain path: RMSNorm, the qkv split and RoPE as LibTorch ops, the head as matmul + cross_entropy.
  ::setenv("LINEARNEXUS_UNFUSED", "1", 1);
  auto unfused = lm_loss(model.forward(x), y);
  unfused.backward();
  ::unsetenv("LINEARNEXUS_UNFUSED");
  std::printf("gpt-small bf16 step: loss fused %.6f unfused %.6f\n", fused.item<double>(), unfused.item<double>());
  CHECK(std::fabs(fused.item<double>() - unfused.item<double>()) < 2e-3 * std::fabs(unfused.item<double>()));
  double worst = 0;
  std::string worst_name;
  for (const auto& p : model.named_parameters()) {
    const double e = rel_err(grads[p.key()], p.value().grad());
    if (e > worst) worst = e, worst_name = p.key();
  }
  std::printf("gpt-small bf16 step: largest gradient difference %.2e (%s)\n", worst, worst_name.c_str());
  CHECK(worst < 5e-2);  // bf16 roundings in different places (RoPE in fp32 vs in bf16 ops)
}
