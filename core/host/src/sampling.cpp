// Sampling on the device (generator.h's sample_tokens): temperature, top-k, top-p and an inverse-CDF
// draw seeded by a counter-based hash, so the same seed draws the same tokens on any device and inside
// a captured CUDA graph.
#include <limits>

#include "linearnexus/host/generator.h"

namespace linearnexus {

namespace {
// A 32-bit integer mix (the "lowbias" hash) on int64 tensors holding values below 2^32: the
// multipliers are below 2^28, so no product overflows.
at::Tensor mix32(at::Tensor x) {
  const int64_t mask = 0xffffffff, mul = 0x45d9f3b;
  for (int round = 0; round < 2; ++round) x = at::bitwise_and(at::bitwise_xor(x, at::__rshift__(x, 16)) * mul, mask);
  return at::bitwise_xor(x, at::__rshift__(x, 16));
}

// Uniforms in (0, 1), one per row: hash(seed, counter, row) with 24 random bits (exact in fp32).
// A seed per row ([rows]) hashes row 0 for every row: row r draws what a one-row call seeded seed[r]
// would, so requests with their own seeds can share a batch (`linearnexus serve`).
at::Tensor row_uniforms(const at::Tensor& seed, const at::Tensor& counter, int64_t rows) {
  const int64_t offset = 0x632be5ab, mask = 0xffffffff;
  auto salt = mix32(at::bitwise_xor(seed, mix32(counter + offset)));  // [1] or [rows]
  auto row = seed.numel() == 1 ? at::arange(rows, seed.options()) : at::zeros({rows}, seed.options());
  auto x = mix32(at::bitwise_and(row + salt, mask));
  return (at::__rshift__(x, 8).to(at::kFloat) + 0.5f) * (1.0f / 16777216.0f);  // [rows]
}
}  // namespace

at::Tensor sample_tokens(const at::Tensor& logits_in, const SamplingParams& p, const at::Tensor& seed,
                         const at::Tensor& counter) {
  // logits: [N, V] -> [N] int64
  auto logits = logits_in.to(at::kFloat);
  if (p.temperature <= 0) return logits.argmax(-1);
  // Shifted by each row's maximum before dividing: a tiny temperature (1e-40) then sends the other
  // logits to -inf and keeps the best at 0, which is greedy, as the limit should be; unshifted, the
  // division overflows to inf - inf = NaN and the draw falls on token 0.
  logits = (logits - std::get<0>(logits.max(-1, /*keepdim=*/true))) / p.temperature;
  const int64_t V = logits.size(-1);
  const double neg_inf = -std::numeric_limits<double>::infinity();
  if (p.top_k > 0 && p.top_k < V) {
    auto kth = std::get<0>(logits.topk(p.top_k, -1)).narrow(-1, p.top_k - 1, 1);  // [N, 1]
    logits = logits.masked_fill(logits < kth, neg_inf);
  }
  if (p.top_p < 1.0) {
    auto sorted = logits.sort(-1, /*descending=*/true);
    auto sorted_logits = std::get<0>(sorted), order = std::get<1>(sorted);
    auto probs = sorted_logits.softmax(-1);
    // Drop a token when the mass before it already reaches top_p (the most likely one always stays).
    auto drop = (probs.cumsum(-1) - probs) >= p.top_p;
    drop.select(-1, 0).fill_(false);  // top_p 0: the most likely token alone
    sorted_logits = sorted_logits.masked_fill(drop, neg_inf);
    logits = at::empty_like(logits).scatter_(-1, order, sorted_logits);
  }
  // Inverse CDF: the first token whose cumulative probability reaches u * total. A token of
  // probability 0 never is the first (its cumulative equals the one before it), u > 0 excludes
  // token 0 when it has none, and u * total < total keeps the tail of zeros out.
  auto cdf = logits.softmax(-1).cumsum(-1);                                                      // [N, V]
  auto u = row_uniforms(seed, counter, logits.size(0)).unsqueeze(1) * cdf.narrow(-1, V - 1, 1);  // [N, 1]
  return (cdf < u).sum(-1).clamp_max(V - 1);
}

}  // namespace linearnexus
