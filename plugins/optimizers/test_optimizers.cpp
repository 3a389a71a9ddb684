// Optimizer plugins: exact agreement with references, state round trips, and that they optimise.
#include <torch/optim.h>

#include "catch.h"
#include "linearnexus/optimizer.h"
#include "linearnexus/plugin_host.h"
#include "test_util.h"

using namespace linearnexus;

namespace {

std::shared_ptr<Optimizer> make(PluginHost& host, const std::string& name, const std::vector<NamedParameter>& ps,
                                const std::vector<std::string>& overrides = {}) {
  std::vector<std::string> all = {"optimizer.name=" + name};
  all.insert(all.end(), overrides.begin(), overrides.end());
  Experiment e = lntest::parse("data: {path: x}\n", host, all);
  return host.registry().make_optimizer(name, ps, e.optimizer);
}

}  // namespace

TEST_CASE("one AdamW step equals torch::optim::AdamW (decay and no-decay groups)", "[optimizers]") {
  PluginHost host;
  torch::manual_seed(0);
  auto w = torch::randn({5, 3}), b = torch::randn({3});
  auto w_ref = w.clone().requires_grad_(true), b_ref = b.clone().requires_grad_(true);
  w.requires_grad_(true), b.requires_grad_(true);
  std::vector<NamedParameter> ps{{"layer.weight", w, {}}, {"layer.bias", b, {}}};
  auto opt = make(host, "adamw", ps, {"optimizer.lr=0.01", "optimizer.weight_decay=0.1", "optimizer.betas=[0.9, 0.95]"});
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(std::vector<at::Tensor>{w_ref},
                      std::make_unique<torch::optim::AdamWOptions>(torch::optim::AdamWOptions(0.01).betas({0.9, 0.95}).weight_decay(0.1)));
  groups.emplace_back(std::vector<at::Tensor>{b_ref},
                      std::make_unique<torch::optim::AdamWOptions>(torch::optim::AdamWOptions(0.01).betas({0.9, 0.95}).weight_decay(0.0)));
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
    auto o1 = make(host, name, p1), o2 = make(host, name, p2);
    for (int s = 0; s < 4; ++s) {
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
    auto opt = make(host, name, ps, {"optimizer.lr=0.01", "optimizer.weight_decay=0.0"});
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
