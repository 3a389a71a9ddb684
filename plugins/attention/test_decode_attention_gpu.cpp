// The static-decoding attention kernel (decode_attention.cu) against plain LibTorch attention: one
// query per (row, head) over a cache of L keys with an additive 0 / -inf bias, GQA, chunks of keys
// only partly filled and a chunk masked entirely. Outputs only: the kernel serves inference (no
// gradient flows through decoding). Label gpu: skips without CUDA.
#include <cmath>
#include <limits>

#include "catch.h"
#include "decode_attention.h"

using namespace linearnexus;

namespace {
// softmax(q k^T / sqrt(D) + bias) v in fp64, k and v repeated for GQA.
at::Tensor reference(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& bias) {
  const int64_t rep = q.size(1) / k.size(1);
  auto kk = k.to(at::kDouble).repeat_interleave(rep, 1), vv = v.to(at::kDouble).repeat_interleave(rep, 1);
  auto s = at::matmul(q.to(at::kDouble), kk.transpose(-2, -1)) / std::sqrt(static_cast<double>(q.size(-1))) +
           bias.to(at::kDouble);
  return at::matmul(at::softmax(s, -1), vv);
}
}  // namespace

TEST_CASE("the CUDA decode attention kernel == plain attention (GQA, padding, partial and masked chunks)", "[gpu]") {
  if (!at::hasCUDA()) LN_SKIP("no CUDA device in this LibTorch/machine");
  at::manual_seed(0);
  for (auto dtype : {at::kFloat, at::kBFloat16})
    for (int64_t D : {64, 32}) {
      INFO("dtype " << dtype << ", head dim " << D);
      const int64_t B = 3, H = 4, Hkv = 2, L = 700;  // chunks of 256: the last one partial
      auto o = at::TensorOptions().device(at::kCUDA).dtype(dtype);
      auto q = at::randn({B, H, 1, D}, o), k = at::randn({B, Hkv, L, D}, o), v = at::randn({B, Hkv, L, D}, o);
      // Row 0 sees keys [0, 600), row 1 keys [300, 650) (the first chunk masked whole), row 2 only key 5.
      auto keep = at::zeros({B, L}, at::kBool);
      keep[0].narrow(0, 0, 600).fill_(true);
      keep[1].narrow(0, 300, 350).fill_(true);
      keep[2][5] = true;
      auto bias = at::zeros({B, 1, 1, L}).masked_fill(keep.logical_not().view({B, 1, 1, L}),
                                                      -std::numeric_limits<double>::infinity()).to(at::kCUDA);
      REQUIRE(attention::decode_attention_applies(q, k));
      auto got = attention::decode_attention_cuda(q, k, v, bias);
      auto want = reference(q, k, v, bias);
      const double tol = dtype == at::kFloat ? 1e-5 : 2e-2;
      CHECK((got.to(at::kDouble) - want).abs().max().item<double>() < tol);
      // One bias row for every batch row.
      auto shared = bias.narrow(0, 0, 1);
      CHECK((attention::decode_attention_cuda(q, k, v, shared).to(at::kDouble) - reference(q, k, v, shared))
                .abs().max().item<double>() < tol);
    }
}
