// The split-KV decode attention (decode_attention.cu through decode_attention_gpu.cpp) against SDPA
// with the block's mask (repeat_interleave'd K and V, the additive bias of columns <= slot and not
// padding: what attention.cpp's static decode step runs) and a float64 reference on the CPU:
// MHA, GQA (G = 2, 3, 8) and MQA, D = 64 and 128, slot 0 / 37 / the last column, left padding,
// chunks of the launcher's choice, 32 and 256 columns, q a strided narrow of the block's [B, H + Hkv, D]
// rotated qk, a token-major cache view; captured in a CUDA graph and replayed with the slot changed
// between replays; the attention block decoding through it (LINEARNEXUS_DECODE_ATTENTION=splitkv)
// equal to SDPA's tokens. Tolerances (||o - ref|| / ||ref||): fp32 2e-5 against both; bf16 4e-3
// against the float64 reference from the same bf16 inputs (fp32 sums, the output rounded once to bf16:
// up to 2^-8 relative per element) and 1e-2 against SDPA in bf16 (itself rounded).
// CTest label `gpu`: skips without CUDA. Written without a GPU: not run yet.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>

#include "block_contract.h"
#include "catch.h"
#include "env_var.h"
#include "decode_attention_gpu.h"
#include "gpu_test_util.h"
#include "linearnexus/compat.h"
#include "linearnexus/host/generator.h"
#include "test_util.h"

#if defined(LINEARNEXUS_WITH_CUDA) && LINEARNEXUS_TORCH_AT_LEAST(2, 0)
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#define LN_TEST_CUDA_GRAPHS 1
#endif

using namespace linearnexus;
using namespace lntest;

namespace {

// Operands as the static decode step has them: q [B, H, D] (a narrow of [B, H + Hkv, D]), k, v
// [B, Hkv, L, D] (the cache, or a token-major view of one), key_padding [B, L] (row 1 left-padded by
// `pad` columns, row 2 by min(slot, 130)), slot [1] int64; the columns after the slot hold garbage.
struct Operands {
  at::Tensor q, k, v, key_padding, slot;
};

// Moves the new token to column `slot` (in place: a captured graph reads the same tensors), row 1
// left-padded by `pad` columns and row 2 by min(slot, 130) (the new token is never padding).
void set_slot(Operands& x, int64_t slot, int64_t pad) {
  const int64_t B = x.key_padding.size(0);
  x.slot.fill_(slot);
  x.key_padding.fill_(true);
  if (B > 1 && pad > 0) x.key_padding[1].narrow(0, 0, pad).fill_(false);
  if (B > 2 && std::min<int64_t>(slot, 130) > 0)
    x.key_padding[2].narrow(0, 0, std::min<int64_t>(slot, 130)).fill_(false);
}

Operands make(int64_t B, int64_t H, int64_t Hkv, int64_t D, int64_t L, int64_t slot, int64_t pad, at::ScalarType dt,
              bool token_major) {
  auto o = at::TensorOptions().device(at::kCUDA);
  Operands x;
  x.q = (at::randn({B, H + Hkv, D}, o) * 1.5).to(dt).narrow(1, 0, H);
  if (token_major) {
    x.k = at::randn({B, L, Hkv, D}, o).to(dt).transpose(1, 2);
    x.v = at::randn({B, L, Hkv, D}, o).to(dt).transpose(1, 2);
  } else {
    x.k = at::randn({B, Hkv, L, D}, o).to(dt);
    x.v = at::randn({B, Hkv, L, D}, o).to(dt);
  }
  if (slot + 1 < L) {  // not written yet: must not matter
    x.k.narrow(2, slot + 1, L - slot - 1).fill_(1e4);
    x.v.narrow(2, slot + 1, L - slot - 1).fill_(-1e4);
  }
  x.key_padding = at::ones({B, L}, o.dtype(at::kBool));
  x.slot = at::full({1}, slot, o.dtype(at::kLong));
  set_slot(x, slot, pad);
  return x;
}

// [B, 1, 1, L] bool: key j visible when j <= slot and not padding (ForwardContext::visibility_mask).
at::Tensor visible(const Operands& x) {
  const int64_t L = x.k.size(2);
  auto m = at::arange(L, x.slot.options()).unsqueeze(0) <= x.slot.unsqueeze(1);  // [1, L]
  return (m & x.key_padding).unsqueeze(1).unsqueeze(1);
}

// float64 on the CPU: softmax(q k^T / sqrt(D)) v over the visible columns. -> [B, H, D]
at::Tensor reference(const Operands& x) {
  const int64_t G = x.q.size(1) / x.k.size(1), D = x.q.size(2);
  auto q = x.q.to(at::kCPU, at::kDouble).unsqueeze(2);                              // [B, H, 1, D]
  auto k = x.k.to(at::kCPU, at::kDouble).repeat_interleave(G, 1);                   // [B, H, L, D]
  auto v = x.v.to(at::kCPU, at::kDouble).repeat_interleave(G, 1);                   // [B, H, L, D]
  auto s = at::matmul(q, k.transpose(-1, -2)) / std::sqrt(static_cast<double>(D));  // [B, H, 1, L]
  s = s.masked_fill(visible(x).to(at::kCPU).logical_not(), -std::numeric_limits<double>::infinity());
  return at::matmul(at::softmax(s, -1), v).squeeze(2);
}

// What attention.cpp runs today: SDPA over the repeated K / V with the additive bias. -> [B, H, D]
at::Tensor sdpa(const Operands& x) {
  const int64_t G = x.q.size(1) / x.k.size(1);
  auto bias = at::zeros(visible(x).sizes(), x.q.options())
                  .masked_fill(visible(x).logical_not(), -std::numeric_limits<double>::infinity());
  auto k = x.k.repeat_interleave(G, 1), v = x.v.repeat_interleave(G, 1);
  return compat::attention(x.q.unsqueeze(2), k, v, bias, false, 0.0).squeeze(2);
}

void check(int64_t H, int64_t Hkv, int64_t D, int64_t L, int64_t slot, int64_t chunk, at::ScalarType dt,
           bool token_major = false) {
  const bool bf16 = dt == at::kBFloat16;
  INFO("H " << H << " Hkv " << Hkv << " D " << D << " L " << L << " slot " << slot << " chunk " << chunk
            << (bf16 ? " bf16" : " fp32") << (token_major ? " token-major cache" : ""));
  torch::manual_seed(1000 * D + 10 * slot + H);
  const auto x = make(3, H, Hkv, D, L, slot, std::min<int64_t>(20, slot), dt, token_major);
  REQUIRE(attention::decode_attention_applies(x.q, x.k, x.v, x.key_padding));
  auto o = attention::decode_attention_cuda(x.q, x.k, x.v, x.key_padding, x.slot, chunk);
  REQUIRE(o.scalar_type() == dt);
  REQUIRE(o.sizes() == x.q.sizes());
  REQUIRE(o.is_contiguous());
  const double e_ref = rel_error(o, reference(x)), e_sdpa = rel_error(o, sdpa(x));
  std::printf("gpu-decode-attention H %2lld Hkv %2lld D %3lld L %4lld slot %3lld chunk %3lld %s: ref %.1e sdpa %.1e\n",
              static_cast<long long>(H), static_cast<long long>(Hkv), static_cast<long long>(D),
              static_cast<long long>(L), static_cast<long long>(slot), static_cast<long long>(chunk),
              bf16 ? "bf16" : "fp32", e_ref, e_sdpa);
  CHECK(e_ref < (bf16 ? 4e-3 : 2e-5));
  CHECK(e_sdpa < (bf16 ? 1e-2 : 2e-5));
}

}  // namespace

TEST_CASE("split-KV decode attention == SDPA with the block's mask and a float64 reference (fp32, bf16)", "[gpu]") {
  LN_SKIP_WITHOUT_CUDA();
  torch::NoGradGuard no_grad;
  const std::pair<int64_t, int64_t> heads[] = {{4, 4}, {4, 2}, {6, 2}, {8, 1}, {16, 2}};  // MHA, G 2, 3, MQA 8, 8
  for (auto dt : {at::kFloat, at::kBFloat16})
    for (auto [H, Hkv] : heads)
      for (int64_t D : {64, 128})
        for (int64_t slot : {0, 37, 299})
          for (int64_t chunk : {0, 32, 256}) check(H, Hkv, D, 300, slot, chunk, dt);
  // A longer cache (the launcher's chunks), a token-major cache view, one split covering the cache.
  for (auto dt : {at::kFloat, at::kBFloat16}) {
    check(12, 12, 64, 1024, 700, 0, dt);
    check(8, 2, 128, 300, 150, 0, dt, true);
    check(4, 2, 64, 200, 199, 256, dt);
  }
}

TEST_CASE("split-KV decode attention takes only what it supports, the rest keeps SDPA", "[gpu]") {
  LN_SKIP_WITHOUT_CUDA();
  const auto x = make(2, 4, 2, 64, 50, 10, 3, at::kFloat, false);
  CHECK(attention::decode_attention_applies(x.q, x.k, x.v, x.key_padding));
  CHECK(attention::decode_attention_applies(x.q, x.k, x.v, at::Tensor()));
  const auto d32 = make(2, 4, 2, 32, 50, 10, 3, at::kFloat, false);
  CHECK_FALSE(attention::decode_attention_applies(d32.q, d32.k, d32.v, d32.key_padding));  // D 32
  CHECK_FALSE(attention::decode_attention_applies(x.q.to(at::kBFloat16), x.k, x.v, x.key_padding));
  CHECK_FALSE(attention::decode_attention_applies(x.q.to(at::kHalf), x.k.to(at::kHalf), x.v.to(at::kHalf), {}));
  CHECK_FALSE(attention::decode_attention_applies(x.q.cpu(), x.k.cpu(), x.v.cpu(), {}));
  CHECK_FALSE(attention::decode_attention_applies(x.q.narrow(1, 0, 3), x.k, x.v, {}));  // H % Hkv != 0
  CHECK_FALSE(attention::decode_attention_applies(x.q, x.k, x.v, x.key_padding.narrow(1, 0, 20)));
  CHECK_THROWS(attention::decode_attention_cuda(x.q, x.k, x.v, x.key_padding, x.slot.cpu()));
}

TEST_CASE("split-KV decode attention captured in a CUDA graph follows the slot between replays", "[gpu]") {
  LN_SKIP_WITHOUT_CUDA();
#ifndef LN_TEST_CUDA_GRAPHS
  LN_SKIP("this LibTorch has no CUDA graphs (1.x)");
#else
  torch::NoGradGuard no_grad;
  for (auto dt : {at::kFloat, at::kBFloat16}) {
    INFO((dt == at::kFloat ? "fp32" : "bf16"));
    torch::manual_seed(7);
    auto x = make(3, 8, 2, 128, 300, 299, 20, dt, false);  // every column written
    at::cuda::CUDAGraph graph;
    at::Tensor out;
    {
      c10::cuda::device_synchronize();
      auto side = c10::cuda::getStreamFromPool();
      c10::cuda::CUDAStreamGuard on_side(side);
      out = attention::decode_attention_cuda(x.q, x.k, x.v, x.key_padding, x.slot);  // warm-up
      side.synchronize();
      graph.capture_begin();
      out = attention::decode_attention_cuda(x.q, x.k, x.v, x.key_padding, x.slot);
      graph.capture_end();
    }
    c10::cuda::device_synchronize();
    for (int64_t s : {20, 21, 63, 64, 65, 200, 299, 0}) {
      INFO("slot " << s);
      set_slot(x, s, std::min<int64_t>(20, s));
      graph.replay();
      auto eager = attention::decode_attention_cuda(x.q, x.k, x.v, x.key_padding, x.slot);
      CHECK(rel_error(out, eager) == 0.0);
      CHECK(rel_error(out, reference(x)) < (dt == at::kFloat ? 2e-5 : 4e-3));
    }
  }
#endif
}

TEST_CASE("the attention block decodes SDPA's tokens with LINEARNEXUS_DECODE_ATTENTION=splitkv (fp32)", "[gpu]") {
  LN_SKIP_WITHOUT_CUDA();
  PluginHost host;
  // head_dim 64 (hidden 256, 4 heads), GQA (2 KV heads); a cache of ~300 columns: several splits.
  Experiment e = parse(
      "data: {path: \"builtin:arithmetic\"}\nmodel: {hidden_size: 256, n_layer: 2, max_seq_len: 512, "
      "block_pattern: [attention], blocks: {attention: {n_head: 4, n_kv_head: 2}}}\n",
      host);
  torch::manual_seed(3);
  auto m = std::make_shared<LMModel>(e.model_config(20), host.registry());
  {
    torch::NoGradGuard g;
    for (auto& kv : m->named_parameters())
      if (kv.key() == "wte.weight") kv.value().mul_(50.0);
  }
  m->eval();
  m->to(at::kCUDA);
  SamplingParams greedy;
  greedy.temperature = 0;
  greedy.max_new_tokens = 290;
  for (const std::string step : {"static", "auto"}) {
    INFO("step " << step);
    GeneratedBatch want, got;
    {
      EnvVar off("LINEARNEXUS_DECODE_ATTENTION", nullptr);
      DecodeGenerator gen(*m, host.registry());
      gen.options.step = step;
      want = gen.generate(padded_prompts(), greedy);
    }
    {
      EnvVar on("LINEARNEXUS_DECODE_ATTENTION", "splitkv");
      DecodeGenerator gen(*m, host.registry());
      gen.options.step = step;
      got = gen.generate(padded_prompts(), greedy);
      if (step == "auto") CHECK(gen.last_call_graphed());
    }
    CHECK(got.completions == want.completions);
    REQUIRE(got.logprobs.sizes() == want.logprobs.sizes());
    CHECK((got.logprobs - want.logprobs).abs().max().item<double>() < 1e-4);
  }
}
