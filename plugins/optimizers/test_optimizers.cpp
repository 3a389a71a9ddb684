// Optimizer plugins: exact agreement with references, state round trips, and that they optimise.
#include <torch/autograd.h>
#include <torch/optim.h>

#include "catch.h"
#include "linearnexus/loss.h"
#include "linearnexus/optimizer.h"
#include "linearnexus/host/plugin_host.h"
#include "linearnexus/host/session.h"
#include "linearnexus/trainer.h"
#include "test_util.h"

#include <cmath>

using namespace linearnexus;
using lntest::error_of;

using lntest::make_optimizer;

TEST_CASE("one AdamW step equals torch::optim::AdamW (decay and no-decay groups)", "[optimizers]") {
  PluginHost host;
  torch::manual_seed(0);
  auto w = torch::randn({5, 3}), b = torch::randn({3});
  auto w_ref = w.clone().requires_grad_(true), b_ref = b.clone().requires_grad_(true);
  w.requires_grad_(true), b.requires_grad_(true);
  std::vector<NamedParameter> ps{{"layer.weight", w, {}}, {"layer.bias", b, {}}};
  auto opt = make_optimizer(host, "adamw", ps,
                            {"optimizer.lr=0.01", "optimizer.weight_decay=0.1", "optimizer.betas=[0.9, 0.95]"});
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(std::vector<at::Tensor>{w_ref},
                      std::make_unique<torch::optim::AdamWOptions>(
                          torch::optim::AdamWOptions(0.01).betas({0.9, 0.95}).weight_decay(0.1)));
  groups.emplace_back(std::vector<at::Tensor>{b_ref},
                      std::make_unique<torch::optim::AdamWOptions>(
                          torch::optim::AdamWOptions(0.01).betas({0.9, 0.95}).weight_decay(0.0)));
  torch::optim::AdamW ref(groups, torch::optim::AdamWOptions(0.01));
  for (int step = 0; step < 3; ++step) {
    auto gw = torch::randn({5, 3}), gb = torch::randn({3});
    w.mutable_grad() = gw.clone(), b.mutable_grad() = gb.clone();
    w_ref.mutable_grad() = gw.clone(), b_ref.mutable_grad() = gb.clone();
    opt->step();
    ref.step();
  }
  CHECK(torch::allclose(w, w_ref, 1e-6, 1e-7));
  CHECK(torch::allclose(b, b_ref, 1e-6, 1e-7));
  CHECK_CONTAINS(opt->describe_groups(), "decay group: 1 tensors, 15 parameters");
}

TEST_CASE("optimizer state round-trips through state_dict", "[optimizers]") {
  PluginHost host;
  for (const auto& name : host.registry().names(PluginKind::Optimizer)) {
    torch::manual_seed(1);
    auto w1 = torch::randn({8, 4}).requires_grad_(true);
    auto w2 = w1.detach().clone().requires_grad_(true);
    std::vector<NamedParameter> p1{{"w.weight", w1, {}}}, p2{{"w.weight", w2, {}}};
    auto o1 = make_optimizer(host, name, p1), o2 = make_optimizer(host, name, p2);
    for (int s = 0; s < 4; ++s) {
      if (o1->wants_curvature_estimate(s)) {  // Sophia's Hessian EMA must round-trip too
        w1.mutable_grad() = torch::randn({8, 4});
        o1->update_curvature(16);
      }
      w1.mutable_grad() = torch::randn({8, 4});
      o1->step();
    }
    {
      torch::NoGradGuard g;
      w2.copy_(w1);
    }
    o2->load_state_dict(o1->state_dict());
    auto grad = torch::randn({8, 4});
    w1.mutable_grad() = grad.clone(), w2.mutable_grad() = grad.clone();
    o1->step(), o2->step();
    INFO(name);
    CHECK(torch::equal(w1, w2));
  }
}

TEST_CASE("every optimizer lowers a least-squares loss", "[optimizers]") {
  PluginHost host;
  for (const auto& name : host.registry().names(PluginKind::Optimizer)) {
    torch::manual_seed(3);
    auto A = torch::randn({64, 16}), x_true = torch::randn({16, 8}), Y = A.mm(x_true);
    auto X = torch::zeros({16, 8}).requires_grad_(true);
    std::vector<NamedParameter> ps{{"x.weight", X, {}}};
    // Muon's lr is a spectral step (every singular direction moves ~lr per step): X_true's
    // spectral norm is ~7, so 0.01 x 300 steps cannot reach it; 0.05 can.
    auto opt = make_optimizer(
        host, name, ps, {name == "muon" ? "optimizer.lr=0.05" : "optimizer.lr=0.01", "optimizer.weight_decay=0.0"});
    auto loss0 = (A.mm(X) - Y).pow(2).mean().item<double>();
    double loss = loss0;
    for (int s = 0; s < 300; ++s) {
      auto l = (A.mm(X) - Y).pow(2).mean();
      opt->zero_grad(ps);
      l.backward();
      opt->step();
      loss = l.item<double>();
    }
    INFO(name << ": loss " << loss0 << " -> " << loss);
    CHECK(loss < 0.05 * loss0);
  }
}

// ---- muon ---------------------------------------------------------------------------------------

namespace {

// The quintic Newton-Schulz iteration in float64, written out independently of the plugin:
// X <- a X + b (X X^T) X + c (X X^T)^2 X on the Frobenius-normalised (tall: transposed) matrix.
at::Tensor ns_reference(const at::Tensor& G, int steps = 5) {
  const double a = 3.4445, b = -4.7750, c = 2.0315;
  auto X = G.to(at::kDouble);
  X = X / (X.norm() + 1e-7);
  const bool tall = X.size(0) > X.size(1);
  if (tall) X = X.t();
  for (int i = 0; i < steps; ++i) {
    auto A = X.mm(X.t());
    X = a * X + b * A.mm(X) + c * A.mm(A).mm(X);
  }
  return tall ? X.t() : X;
}

// What the muon plugin makes of G: one step from zero with lr 1, no momentum, no decay, divided by
// the ratio shape scale, is the orthogonalised G.
at::Tensor ns_via_muon(PluginHost& host, const at::Tensor& G) {
  auto p = torch::zeros_like(G).requires_grad_(true);
  std::vector<NamedParameter> ps{{"h.weight", p, {}}};
  auto opt = make_optimizer(
      host, "muon", ps,
      {"optimizer.lr=1", "optimizer.momentum=0", "optimizer.nesterov=false", "optimizer.weight_decay=0"});
  p.mutable_grad() = G.clone();
  opt->step();
  const double scale = std::sqrt(std::max(1.0, static_cast<double>(G.size(0)) / static_cast<double>(G.size(1))));
  return -p.detach() / scale;
}

// The scalar map the iteration applies to each normalised singular value, `steps` times.
double ns_scalar(double x, int steps = 5) {
  for (int i = 0; i < steps; ++i) x = 3.4445 * x - 4.7750 * x * x * x + 2.0315 * x * x * x * x * x;
  return x;
}

}  // namespace

TEST_CASE("muon: Newton-Schulz output has singular values in the quintic's band and matches float64",
          "[optimizers][muon]") {
  PluginHost host;
  torch::manual_seed(11);
  for (auto shape : std::vector<std::pair<int64_t, int64_t>>{{32, 32}, {16, 64}, {64, 16}, {48, 20}, {8, 100}}) {
    auto G = torch::randn({shape.first, shape.second});
    auto sv_in = at::linalg_svdvals(G.to(at::kDouble));
    // The band holds for normalised singular values >= 2e-3 (the scalar map sends [2e-3, 1] into
    // [0.68, 1.21] in 5 steps); random Gaussian matrices of these shapes are well inside that.
    REQUIRE((sv_in.min() / G.to(at::kDouble).norm()).item<double>() > 2e-3);
    auto O = ns_via_muon(host, G);
    auto sv = at::linalg_svdvals(O.to(at::kDouble));
    INFO(shape.first << "x" << shape.second << ": singular values in [" << sv.min().item<double>() << ", "
                     << sv.max().item<double>() << "]");
    CHECK(sv.min().item<double>() > 0.67);
    CHECK(sv.max().item<double>() < 1.22);
    CHECK(torch::allclose(O.to(at::kDouble), ns_reference(G), 1e-4, 1e-4));
  }
}

TEST_CASE("muon: one step on a small matrix equals the hand-computed update", "[optimizers][muon]") {
  // G = [[0,4],[3,0],[0,0]] has singular values 4 and 3 (Frobenius norm 5), so the orthogonalised
  // update is [[0, f(0.8)], [f(0.6), 0], [0, 0]] with f the scalar quintic map applied 5 times.
  // Tall 3x2: shape scale sqrt(3/2). Nesterov's (1 + beta) factor vanishes in the normalisation.
  PluginHost host;
  auto p = torch::ones({3, 2}).requires_grad_(true);
  std::vector<NamedParameter> ps{{"blocks.0.mlp.up.weight", p, {}}};
  auto opt = make_optimizer(host, "muon", ps, {"optimizer.lr=0.1", "optimizer.weight_decay=0.5"});
  p.mutable_grad() = torch::tensor({0.f, 4.f, 3.f, 0.f, 0.f, 0.f}).reshape({3, 2});
  opt->step();
  const double lr = 0.1, wd = 0.5, s = std::sqrt(1.5);
  auto expect = torch::full({3, 2}, 1.0 - lr * wd, at::kDouble);
  expect[0][1] -= lr * s * ns_scalar(0.8);
  expect[1][0] -= lr * s * ns_scalar(0.6);
  INFO("got " << p << "\nexpected " << expect);
  CHECK(torch::allclose(p.detach().to(at::kDouble), expect, 1e-5, 1e-6));
  CHECK(opt->state_dict().at("blocks.0.mlp.up.weight.momentum_buffer").equal(p.grad()));
}

TEST_CASE("muon: a fused matrix is orthogonalised per declared sub-matrix", "[optimizers][muon]") {
  PluginHost host;
  torch::manual_seed(12);
  auto G = torch::randn({4, 2});
  auto p = torch::zeros({4, 2}).requires_grad_(true);
  std::vector<NamedParameter> ps{{"blocks.0.qkv.weight", p, {3, 1}}};
  auto opt = make_optimizer(host, "muon", ps, {"optimizer.lr=1", "optimizer.momentum=0", "optimizer.weight_decay=0"});
  p.mutable_grad() = G.clone();
  opt->step();
  auto got = -p.detach().to(at::kDouble);
  // Part 1: 3x2 (scale sqrt(3/2)); part 2: 1x2 (scale 1).
  CHECK(torch::allclose(got.narrow(0, 0, 3), std::sqrt(1.5) * ns_reference(G.narrow(0, 0, 3)), 1e-4, 1e-5));
  CHECK(torch::allclose(got.narrow(0, 3, 1), ns_reference(G.narrow(0, 3, 1)), 1e-4, 1e-5));
  CHECK_CONTAINS(opt->describe_groups(), "1 fused matrices split");
  // A split that does not cover the matrix is an error.
  std::vector<NamedParameter> bad{{"blocks.0.qkv.weight", torch::zeros({4, 2}), {3, 2}}};
  CHECK_CONTAINS(error_of([&] { make_optimizer(host, "muon", bad); }), "covers 5 rows, the matrix has 4");
}

// ---- sophia -------------------------------------------------------------------------------------

TEST_CASE("sophia: each coordinate's step is bounded by lr (plus weight decay)", "[optimizers][sophia]") {
  PluginHost host;
  torch::manual_seed(21);
  auto w = torch::randn({16, 8}).requires_grad_(true), b = torch::randn({8}).requires_grad_(true);
  std::vector<NamedParameter> ps{{"l.weight", w, {}}, {"l.bias", b, {}}};
  const double lr = 0.01, wd = 0.1;
  auto opt = make_optimizer(host, "sophia", ps, {"optimizer.lr=0.01", "optimizer.weight_decay=0.1", "optimizer.k=3"});
  for (int s = 0; s < 12; ++s) {
    if (opt->wants_curvature_estimate(s)) {
      // Tiny or zero curvature in places (where m/(rho h) would explode without the clip).
      w.mutable_grad() = torch::randn({16, 8}) * (torch::rand({16, 8}) > 0.5).to(at::kFloat) * 1e-3;
      b.mutable_grad() = torch::randn({8}) * 1e-3;
      opt->update_curvature(64);
    }
    // Gradients of wildly different scales.
    w.mutable_grad() = torch::randn({16, 8}) * std::pow(10.0, s % 4 - 1);
    b.mutable_grad() = torch::randn({8}) * 100;
    auto w0 = w.detach().clone(), b0 = b.detach().clone();
    opt->step();
    auto dw = (w.detach() - w0).abs(), db = (b.detach() - b0).abs();
    CHECK((dw <= lr + lr * wd * w0.abs() + 1e-7).all().item<bool>());  // decay group
    CHECK((db <= lr + 1e-7).all().item<bool>());                       // no-decay group
    if (s == 0) CHECK(dw.max().item<double>() > 0.9 * lr);             // and the bound is reached
  }
}

TEST_CASE("sophia: the GNB estimate is non-negative and equals its definition on a tiny model",
          "[optimizers][sophia]") {
  PluginHost host;
  Experiment e = lntest::parse(R"(
data: {path: x}
model: {hidden_size: 8, n_layer: 1, max_seq_len: 8, block_pattern: [attention], blocks: {attention: {n_head: 2}}}
)",
                               host);
  torch::manual_seed(31);
  LMModel model(e.model_config(7), host.registry());
  auto ps = model.optimizer_parameters();
  auto opt = make_optimizer(host, "sophia", ps, {"optimizer.betas=[0.965, 0.99]"});
  auto x = torch::randint(0, 7, {3, 5});
  const int64_t N = 3 * 5;

  // The definition, written out: labels y ~ softmax(logits) per position; g = grad of
  // (1/N) sum_i -log p(y_i | x); h_hat = N * g^2. Then h = (1 - beta2) h_hat from h = 0.
  torch::manual_seed(99);
  auto logits = model.forward(x).reshape({N, 7});
  auto y = at::multinomial(at::softmax(logits.detach(), -1), 1).reshape({N});
  auto nll = -at::log_softmax(logits, -1).gather(1, y.unsqueeze(1)).sum() / static_cast<double>(N);
  std::vector<at::Tensor> leaves;
  for (const auto& np : ps) leaves.push_back(np.param);
  auto grads = torch::autograd::grad({nll}, leaves);

  // The pass as the trainer runs it.
  torch::manual_seed(99);
  opt->zero_grad(ps);
  sampled_label_loss(model.forward(x)).backward();
  opt->update_curvature(N);
  auto st = opt->state_dict();
  CHECK(st.at("curvature_updates").item<int64_t>() == 1);
  double total = 0;
  for (size_t i = 0; i < ps.size(); ++i) {
    INFO(ps[i].name);
    const auto& h = st.at(ps[i].name + ".hessian");
    CHECK((h >= 0).all().item<bool>());
    CHECK(torch::allclose(h, 0.01 * N * grads[i] * grads[i], 1e-4, 1e-10));
    total += h.sum().item<double>();
  }
  CHECK(total > 0);
}

TEST_CASE("sophia: the curvature estimate runs only every k steps", "[optimizers][sophia]") {
  PluginHost host;
  auto w = torch::zeros({2, 2}).requires_grad_(true);
  std::vector<NamedParameter> ps{{"w.weight", w, {}}};
  for (int64_t k : {1, 3, 10}) {
    auto opt = make_optimizer(host, "sophia", ps, {"optimizer.k=" + std::to_string(k)});
    for (int64_t s = 0; s < 25; ++s) {
      INFO("k " << k << " step " << s);
      CHECK(opt->wants_curvature_estimate(s) == (s % k == 0));
    }
  }
  // The other optimizers never ask for one.
  for (const char* name : {"adamw", "muon"}) {
    auto opt = make_optimizer(host, name, ps);
    for (int64_t s = 0; s < 25; ++s) CHECK_FALSE(opt->wants_curvature_estimate(s));
  }
  CHECK_CONTAINS(error_of([&] { make_optimizer(host, "sophia", ps, {"optimizer.k=0"}); }), "optimizer.k must be >= 1");
}
