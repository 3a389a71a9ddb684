// The SDK's chunked scans (chunked_scan.h) on their own, below any block: each chunked form against
// its recurrent form (one token after the other) in the output, the final state and the gradient of
// every input (the entering state included), for T not a multiple of the chunk, chunk sizes that cut
// everywhere, more than 32 chunks (the states entering the chunks from the scan over chunks rather
// than the loop), strong decays that stay finite, and a token that must leave the state untouched.
#include <cmath>
#include <functional>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "catch.h"
#include "linearnexus/chunked_scan.h"
#include "test_util.h"

using namespace linearnexus;

namespace {

using Inputs = std::map<std::string, at::Tensor>;  // q, k, v, g, beta, a, b, S (as the family takes them)
using Scan = std::function<at::Tensor(const Inputs&, at::Tensor& S)>;

// a == b up to rtol, with an absolute floor scaled to b's magnitude.
bool close(const at::Tensor& a, const at::Tensor& b, double rtol = 1e-4) {
  const double scale = b.abs().max().item<double>();
  return torch::allclose(a, b, rtol, 1e-5 * scale + 1e-12);
}

// The chunked and the recurrent form on the same inputs: outputs, final states and every input's
// gradient (through a random projection of o and of the final state) agree.
void check_forms(const std::string& what, const Inputs& in, const Scan& chunked, const Scan& recurrent) {
  INFO(what);
  auto run = [&](const Scan& scan) {
    Inputs leaves;
    for (const auto& [k, t] : in) leaves[k] = t.detach().clone().requires_grad_(true);
    at::Tensor S = leaves.at("S");
    at::Tensor o = scan(leaves, S);
    torch::manual_seed(99);
    auto loss = (o * torch::randn_like(o)).sum() + (S * torch::randn_like(S)).sum();
    loss.backward();
    return std::make_tuple(o.detach(), S.detach(), leaves);
  };
  auto [oc, sc, lc] = run(chunked);
  auto [orr, sr, lr] = run(recurrent);
  INFO("output max diff " << (oc - orr).abs().max().item<double>());
  CHECK(close(oc, orr));
  INFO("state max diff " << (sc - sr).abs().max().item<double>());
  CHECK(close(sc, sr));
  for (const auto& [k, t] : lr) {
    INFO("gradient of " << k << ", max diff " << (lc.at(k).grad() - t.grad()).abs().max().item<double>());
    REQUIRE(lc.at(k).grad().defined());
    CHECK(torch::isfinite(lc.at(k).grad()).all().item<bool>());
    CHECK(close(lc.at(k).grad(), t.grad(), 2e-4));
  }
}

const int64_t B = 2, H = 2, K = 4, V = 3;

Inputs qkv(int64_t T) {
  return {{"q", torch::randn({B, H, T, K})},
          {"k", torch::randn({B, H, T, K}) * 0.5},
          {"v", torch::randn({B, H, T, V})},
          {"S", torch::randn({B, H, K, V}) * 0.3}};
}

}  // namespace

TEST_CASE("decay scan: chunked == recurrent, a decay per key channel and one per head", "[chunked_scan]") {
  for (int64_t chunk : {8, 3, 1})  // 1: 37 chunks, the scan over chunks
    for (bool per_channel : {true, false})
      for (int64_t T : {37, 5}) {
        torch::manual_seed(T + chunk);
        Inputs in = qkv(T);
        in["g"] = -torch::rand({B, H, T, per_channel ? K : 1}) * 2.0;  // log-decays in (-2, 0]
        check_forms(
            "chunk " + std::to_string(chunk) + (per_channel ? " per channel" : " per head") + " T " + std::to_string(T),
            in,
            [&](const Inputs& x, at::Tensor& S) {
              return decay_scan_chunked(x.at("q"), x.at("k"), x.at("v"), x.at("g"), S, chunk);
            },
            [](const Inputs& x, at::Tensor& S) {
              return decay_scan_recurrent(x.at("q"), x.at("k"), x.at("v"), x.at("g"), S);
            });
      }
}

TEST_CASE("delta rule: chunked (WY form) == recurrent, with and without a gate", "[chunked_scan]") {
  for (int64_t chunk : {8, 3, 1})
    for (bool gated : {true, false})
      for (int64_t T : {37, 5}) {
        torch::manual_seed(100 + T + chunk);
        Inputs in = qkv(T);
        in["k"] = torch::nn::functional::normalize(in.at("k"), torch::nn::functional::NormalizeFuncOptions().dim(-1));
        in["beta"] = torch::rand({B, H, T});
        if (gated) in["g"] = -torch::rand({B, H, T}) * 2.0;
        auto g = [&](const Inputs& x) { return gated ? x.at("g") : at::Tensor(); };
        check_forms(
            "chunk " + std::to_string(chunk) + (gated ? " gated" : "") + " T " + std::to_string(T), in,
            [&](const Inputs& x, at::Tensor& S) {
              return delta_scan_chunked(x.at("q"), x.at("k"), x.at("v"), x.at("beta"), g(x), S, chunk);
            },
            [&](const Inputs& x, at::Tensor& S) {
              return delta_scan_recurrent(x.at("q"), x.at("k"), x.at("v"), x.at("beta"), g(x), S);
            });
      }
}

TEST_CASE("generalised delta rule: chunked == recurrent, the pairwise form and the bounded-decay matmuls",
          "[chunked_scan]") {
  for (int64_t chunk : {4, 3, 1})
    for (bool bounded : {false, true})
      for (int64_t T : {37, 5}) {
        torch::manual_seed(200 + T + chunk);
        Inputs in = qkv(T);
        // RWKV-7's shape: a = -kappa, b = kappa * iclr with kappa unit-norm, decays >= -e^-0.5.
        auto kappa = torch::nn::functional::normalize(torch::randn({B, H, T, K}),
                                                      torch::nn::functional::NormalizeFuncOptions().dim(-1));
        in["a"] = -kappa;
        in["b"] = kappa * torch::rand({B, H, T, K});
        const double min_log_decay = -std::exp(-0.5);
        in["g"] = torch::rand({B, H, T, K}) * min_log_decay;
        const double bound = bounded ? min_log_decay : -std::numeric_limits<double>::infinity();
        check_forms(
            "chunk " + std::to_string(chunk) + (bounded ? " bounded" : " pairwise") + " T " + std::to_string(T), in,
            [&](const Inputs& x, at::Tensor& S) {
              return gdelta_scan_chunked(x.at("q"), x.at("k"), x.at("v"), x.at("a"), x.at("b"), x.at("g"), S, chunk,
                                         bound);
            },
            [](const Inputs& x, at::Tensor& S) {
              return gdelta_scan_recurrent(x.at("q"), x.at("k"), x.at("v"), x.at("a"), x.at("b"), x.at("g"), S);
            });
      }
}

TEST_CASE("chunked scans: strong decays over long sequences stay finite and match the recurrent form",
          "[chunked_scan]") {
  torch::manual_seed(7);
  const int64_t T = 1024;
  Inputs in = qkv(T);
  torch::NoGradGuard no_grad;
  // log-decays down to -80 per step: exp of a chunk's cumulative sum taken the other way round would
  // be inf; every form must only ever exponentiate non-positive numbers.
  auto g = -torch::rand({B, H, T, K}) * 80.0;
  at::Tensor Sc = in.at("S").clone(), Sr = in.at("S").clone();
  auto oc = decay_scan_chunked(in.at("q"), in.at("k"), in.at("v"), g, Sc, 16);
  auto orr = decay_scan_recurrent(in.at("q"), in.at("k"), in.at("v"), g, Sr);
  CHECK(torch::isfinite(oc).all().item<bool>());
  CHECK(close(oc, orr));
  auto beta = torch::rand({B, H, T});
  auto kn = torch::nn::functional::normalize(in.at("k"), torch::nn::functional::NormalizeFuncOptions().dim(-1));
  auto gh = -torch::rand({B, H, T}) * 80.0;
  Sc = in.at("S").clone(), Sr = in.at("S").clone();
  oc = delta_scan_chunked(in.at("q"), kn, in.at("v"), beta, gh, Sc, 16);
  orr = delta_scan_recurrent(in.at("q"), kn, in.at("v"), beta, gh, Sr);
  CHECK(torch::isfinite(oc).all().item<bool>());
  CHECK(close(oc, orr));
  CHECK(close(Sc, Sr));
}

TEST_CASE("chunked scans: a no-op token leaves the state as if it were absent (left padding)", "[chunked_scan]") {
  torch::manual_seed(8);
  const int64_t T = 11;
  Inputs in = qkv(T);
  torch::NoGradGuard no_grad;
  auto g = -torch::rand({B, H, T, K});
  auto beta = torch::rand({B, H, T});
  // Tokens 0..2 are padding: k = 0 and g = 0 (decay family), beta = 0 and g = 0 (delta rule).
  auto pad = [](at::Tensor t) {
    t = t.clone();
    t.narrow(2, 0, 3).zero_();
    return t;
  };
  at::Tensor S1 = in.at("S").clone(), S2 = in.at("S").clone();
  auto o1 = decay_scan_chunked(in.at("q"), pad(in.at("k")), in.at("v"), pad(g), S1, 4);
  auto o2 = decay_scan_chunked(in.at("q").narrow(2, 3, T - 3), in.at("k").narrow(2, 3, T - 3),
                               in.at("v").narrow(2, 3, T - 3), g.narrow(2, 3, T - 3), S2, 4);
  CHECK(close(o1.narrow(2, 3, T - 3), o2));
  CHECK(close(S1, S2));
  S1 = in.at("S").clone(), S2 = in.at("S").clone();
  auto gh = -torch::rand({B, H, T});
  o1 = delta_scan_chunked(in.at("q"), in.at("k"), in.at("v"), pad(beta), pad(gh), S1, 4);
  o2 = delta_scan_chunked(in.at("q").narrow(2, 3, T - 3), in.at("k").narrow(2, 3, T - 3),
                          in.at("v").narrow(2, 3, T - 3), beta.narrow(2, 3, T - 3), gh.narrow(2, 3, T - 3), S2, 4);
  CHECK(close(o1.narrow(2, 3, T - 3), o2));
  CHECK(close(S1, S2));
}
