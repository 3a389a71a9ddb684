// Decode fusion (LINEARNEXUS_DECODE_FUSION=1, issue #30 item 5) against the plain ops: the skinny
// matmul with its norm prologue (core/sdk/src/cuda/skinny_gemm.cu) equals the norm then the matmul
// for M = 1..16 rows, RMSNorm and LayerNorm, fp32 / bf16 inputs and norm weights, the epilogues, every
// configuration kind (clusters on Hopper) and gpt-small's shapes (ln1 -> qkv, ln2 -> fc, the final
// norm -> the LM head); the greedy head (token and log-prob without the logits) against argmax and
// log_softmax of the same kernel's logits; the wiring (norm_linear_forward, ResidualMLP::forward_sum,
// the fallbacks); and gpt-small decoding with the fusion on (greedy: through the greedy head) against off.
// Tolerances: RMSNorm's prologue is rms_norm.cu's arithmetic, so against rms_norm then skinny_linear
// (the same matmul on the same bf16 input) the output is equal bit for bit. Against an fp32 reference
// from the bf16-rounded normalised input: ||y - ref|| / ||ref|| < 4e-3, max |y - ref| < 1e-2 max |ref|
// (bf16 output rounding plus fp32 sums, as test_skinny_gemm_gpu), and against the plain bf16 ops
// (at::layer_norm's own fp32 order, cuBLAS) 1e-2 / 2e-2. Decoding: the greedy tokens agree up to the
// first near-tie, i.e. where the two runs drew different tokens their drawn log-probs differ by < 0.05
// (both drew a near-maximum token: bf16 noise decided), the log-probs of the agreed prefix within
// 0.05 and at least 8 of 16 tokens agree per row. The greedy head: the token exactly argmax's, the
// log-prob within 1e-4 of log_softmax's (fp32 sums in another order). CTest label `gpu`: skips without CUDA.
#include <cstdio>
#include <cstdlib>

#include "catch.h"
#include "gpu_test_util.h"
#include "linearnexus/compat.h"
#include "linearnexus/host/generator.h"
#include "linearnexus/layers.h"
#include "test_util.h"

#ifdef LINEARNEXUS_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>

#include "cuda/fused_layers_cuda.h"
#include "cuda/skinny_gemm_cuda.h"
#endif

using namespace linearnexus;

namespace {

#ifdef LINEARNEXUS_WITH_CUDA
struct Case {
  int64_t M, K, N;
  bool layer = false;                              // LayerNorm (with a bias), else RMSNorm
  at::ScalarType x = at::kFloat, nw = at::kFloat;  // the stream's dtype, the norm's weights'
  bool bias = false, residual = false, gelu = false;
  const cuda::SkinnyGemmConfig* config = nullptr;
};

// skinny_norm_linear against the fp32 reference and against the plain ops.
void check(const Case& c) {
  INFO("M " << c.M << " K " << c.K << " N " << c.N << " layer " << c.layer << " x " << c10::toString(c.x) << " nw "
            << c10::toString(c.nw) << " bias " << c.bias << " residual " << c.residual << " gelu " << c.gelu
            << " config " << (c.config ? c.config->splits : 0));
  auto o = at::TensorOptions().device(at::kCUDA);
  auto x = (at::randn({c.M, c.K}, o) * 2 + at::randn({c.M, 1}, o)).to(c.x);  // rows with their own mean
  auto nw = (1 + 0.2 * at::randn({c.K}, o)).to(c.nw);
  auto nb = c.layer ? (0.2 * at::randn({c.K}, o)).to(c.nw) : at::Tensor();
  auto w = (at::randn({c.N, c.K}, o) / std::sqrt(static_cast<double>(c.K))).to(at::kBFloat16);
  auto bias = c.bias ? at::randn({c.N}, o) * 0.2 : at::Tensor();
  auto residual = c.residual ? at::randn({c.M, c.N}, o) : at::Tensor();
  auto y = cuda::skinny_norm_linear(x, nw, nb, 1e-5, c.layer, w, bias, residual, c.gelu, c.config);
  CHECK(y.scalar_type() == (c.residual ? at::kFloat : at::kBFloat16));
  // The plain ops: the norm in fp32, rounded to bf16 (the next matmul's input), then the matmul.
  auto xf = x.to(at::kFloat);
  auto normed = c.layer ? at::layer_norm(xf, {c.K}, nw.to(at::kFloat), nb.to(at::kFloat), 1e-5)
                        : compat::rms_norm(xf, nw.to(at::kFloat), 1e-5);
  auto xn = normed.to(at::kBFloat16);
  auto ref = at::linear(xn.to(at::kFloat), w.to(at::kFloat), bias);
  auto ops = at::linear(xn, w, bias.defined() ? bias.to(at::kBFloat16) : at::Tensor());
  if (c.gelu) ref = at::gelu(ref, "tanh"), ops = at::gelu(ops, "tanh");
  if (c.residual) ref = ref + residual, ops = residual + ops;
  const double e = lntest::rel_error(y, ref), m = lntest::max_rel_error(y, ref), eo = lntest::rel_error(y, ops),
               mo = lntest::max_rel_error(y, ops);
  CHECK(e < 4e-3);
  CHECK(m < 1e-2);
  CHECK(eo < 1e-2);
  CHECK(mo < 2e-2);
  if (e >= 4e-3 || m >= 1e-2)
    std::printf("skinny_norm_linear M %ld K %ld N %ld: rel %.2e max %.2e (vs ops %.2e %.2e)\n", (long)c.M, (long)c.K,
                (long)c.N, e, m, eo, mo);
  if (!c.layer && c.nw == at::kFloat) {
    // RMSNorm: rms_norm.cu then the same matmul on the same bf16 input gives the same bits.
    auto unfused = cuda::skinny_linear(cuda::rms_norm(x, nw, 1e-5, at::kBFloat16), w, bias, residual, c.gelu, c.config);
    CHECK(torch::equal(y, unfused));
  }
}
#endif

}  // namespace

TEST_CASE("norm prologue: skinny_norm_linear equals the norm then the matmul, M = 1..16, RMS and LayerNorm", "[gpu]") {
  if (!at::hasCUDA()) LN_SKIP("no CUDA device in this LibTorch/machine");
#ifdef LINEARNEXUS_WITH_CUDA
  torch::manual_seed(21);
  for (int64_t M = 1; M <= 16; ++M) {
    check({M, 768, 2304});                                                   // ln1 -> qkv (RMSNorm)
    check({M, 768, 2304, true, at::kFloat, at::kFloat, true});               // GPT-2's ln1 -> qkv with its bias
    check({M, 768, 3072, true, at::kFloat, at::kFloat, true, false, true});  // ln2 -> fc, GELU
    check({M, 200, 33, false, at::kBFloat16, at::kBFloat16, false, true});   // bf16 stream and weights, residual
    check({M, 1000, 77, true, at::kBFloat16, at::kFloat});                   // K % 32 == 8, N % 16 == 13
  }
  for (int64_t M : {1, 2, 8}) {  // the final norm -> the LM head (the generator's rule: <= 8 rows)
    check({M, 768, 50304});
    check({M, 768, 50304, true});
  }
  // Explicit configurations, incl. clusters whose CTAs each normalise their own k range.
  const bool hopper = at::cuda::getCurrentDeviceProperties()->major >= 9;
  const int64_t nkb = (1000 + 31) / 32;
  for (int tiles : {1, 2, 4})
    for (int warps : {1, 3, 8})
      for (int splits : {1, 2, 3, 8}) {
        if (splits > 1 && !hopper) continue;
        const int64_t kpw = (nkb + warps * splits - 1) / (warps * splits);
        cuda::SkinnyGemmConfig cfg{tiles, warps, splits, kpw};
        check({5, 1000, 77, true, at::kFloat, at::kFloat, true, true, false, &cfg});
        check({13, 1000, 77, false, at::kFloat, at::kFloat, false, false, false, &cfg});
      }
#endif
}

TEST_CASE("norm prologue: where it applies, and the wiring with LINEARNEXUS_DECODE_FUSION on and off", "[gpu]") {
  if (!at::hasCUDA()) LN_SKIP("no CUDA device in this LibTorch/machine");
#ifdef LINEARNEXUS_WITH_CUDA
  torch::manual_seed(22);
  torch::NoGradGuard no_grad;
  auto o = at::TensorOptions().device(at::kCUDA);
  auto w = at::randn({64, 96}, o).to(at::kBFloat16), nw = at::ones({96}, o), x = at::randn({3, 96}, o);
  {
    compat::AutocastGuard autocast(true, at::kBFloat16);
    CHECK(cuda::skinny_norm_linear_applies(x, nw, at::Tensor(), w, at::Tensor(), at::Tensor()));
    CHECK_FALSE(cuda::skinny_norm_linear_applies(at::randn({17, 96}, o), nw, at::Tensor(), w, at::Tensor(),
                                                 at::Tensor()));  // 17 rows
    CHECK_FALSE(cuda::skinny_norm_linear_applies(x, at::ones({95}, o), at::Tensor(), w, at::Tensor(), at::Tensor()));
    auto wide = at::randn({64, 4096}, o).to(at::kBFloat16);  // 16 rows of 4096: more shared memory than allowed
    CHECK_FALSE(cuda::skinny_norm_linear_applies(at::randn({16, 4096}, o), at::ones({4096}, o), at::Tensor(), wide,
                                                 at::Tensor(), at::Tensor()));
    ::setenv("LINEARNEXUS_UNFUSED", "1", 1);
    CHECK_FALSE(cuda::skinny_norm_linear_applies(x, nw, at::Tensor(), w, at::Tensor(), at::Tensor()));
    ::unsetenv("LINEARNEXUS_UNFUSED");
  }
  CHECK_FALSE(
      cuda::skinny_norm_linear_applies(x, nw, at::Tensor(), w, at::Tensor(), at::Tensor()));  // fp32, no autocast
  // norm_linear_forward and ResidualMLP::forward_sum, fusion on against off, under bf16 autocast.
  ModelDims dims;
  dims.hidden_size = 768;
  dims.n_layer = 12;
  for (NormKind kind : {NormKind::RMSNorm, NormKind::LayerNorm})
    for (const char* mlp_kind : {"gelu", "swiglu"}) {
      INFO("layer norm " << (kind == NormKind::LayerNorm) << " mlp " << mlp_kind);
      dims.norm = kind;
      Norm norm(768, dims);
      torch::nn::Module holder;
      ResidualMLP tail(holder, dims, mlp_kind, 0, /*mlp_bias=*/kind == NormKind::LayerNorm);
      holder.to(at::kCUDA);
      norm.to(at::kCUDA);
      for (auto& p : holder.named_parameters()) {
        if (p.key().find("bias") != std::string::npos) p.value().normal_(0, 0.1);
        if (p.key().rfind("mlp.", 0) == 0 && p.key().find("weight") != std::string::npos)
          p.value().set_data(p.value().to(at::kBFloat16));  // the generator's replica: bf16 Linear weights
      }
      if (norm.bias.defined()) norm.bias.normal_(0, 0.1);
      norm.weight.normal_(1, 0.1);
      auto qkv_w = (at::randn({2304, 768}, o) * 0.03).to(at::kBFloat16);
      for (int64_t B : {1, 5, 16}) {
        auto h = at::randn({B, 1, 768}, o);  // the fp32 residual stream
        compat::AutocastGuard autocast(true, at::kBFloat16);
        ::setenv("LINEARNEXUS_DECODE_FUSION", "1", 1);
        CHECK(tail.forward_sum_fused(h));
        auto fused = norm_linear_forward(norm, h, qkv_w);
        auto fused_tail = tail.forward_sum(h);
        CHECK(norm_linear_fused(norm, h, qkv_w).defined());
        ::unsetenv("LINEARNEXUS_DECODE_FUSION");
        CHECK_FALSE(tail.forward_sum_fused(h));
        CHECK_FALSE(norm_linear_fused(norm, h, qkv_w).defined());
        auto plain = norm_linear_forward(norm, h, qkv_w);
        auto plain_tail = tail.forward(h, at::zeros_like(h), false);
        CHECK(fused.first.is_same(h));
        CHECK(lntest::rel_error(fused.second, plain.second) < 1e-2);
        CHECK(fused_tail.scalar_type() == at::kFloat);
        CHECK(lntest::rel_error(fused_tail - h, plain_tail - h) < 2e-2);
      }
    }
#endif
}

TEST_CASE("greedy head: the token and log-prob of the fused kernel equal argmax and log_softmax of its logits",
          "[gpu]") {
  if (!at::hasCUDA()) LN_SKIP("no CUDA device in this LibTorch/machine");
#ifdef LINEARNEXUS_WITH_CUDA
  torch::manual_seed(23);
  auto o = at::TensorOptions().device(at::kCUDA);
  for (bool layer : {false, true})
    for (int64_t V : {int64_t{50257}, int64_t{1000}, int64_t{37}})
      for (int64_t M : {1, 3, 8, 16}) {
        INFO("layer " << layer << " V " << V << " M " << M);
        const int64_t K = 768, Npad = (V + 63) / 64 * 64;
        auto x = at::randn({M, K}, o) * 2 + at::randn({M, 1}, o);
        auto nw = 1 + 0.2 * at::randn({K}, o), nb = layer ? 0.2 * at::randn({K}, o) : at::Tensor();
        auto w = (at::randn({Npad, K}, o) * 3 / std::sqrt(static_cast<double>(K))).to(at::kBFloat16);
        w.narrow(0, V, Npad - V).zero_();   // the padded head's zero rows: never candidates
        if (V > 40) w[17].copy_(w[V - 5]);  // an exact tie between two CTAs' features
        auto ws = at::zeros({cuda::greedy_workspace_bytes(V)}, o.dtype(at::kByte));
        // The plain path: the fused norm + head's logits (bf16), then argmax and log_softmax in fp32.
        auto logits = cuda::skinny_norm_linear(x, nw, nb, 1e-5, layer, w, at::Tensor(), at::Tensor()).narrow(1, 0, V);
        auto lf = logits.to(at::kFloat);
        auto want = lf.argmax(-1);
        auto want_logp =
            at::log_softmax(lf - std::get<0>(lf.max(-1, true)), -1).gather(1, want.unsqueeze(1)).squeeze(1);
        for (int call = 0; call < 2; ++call) {  // twice: the workspace is left ready for the next call
          auto got = cuda::skinny_norm_greedy_head(x, nw, nb, 1e-5, layer, w, V, ws);
          CHECK(torch::equal(got.first, want));
          CHECK((got.second - want_logp).abs().max().item<double>() < 1e-4);
        }
        if (V > 40) {  // the tie goes to the lower index, as argmax's first occurrence
          auto x17 = cuda::skinny_norm_greedy_head(x, nw, nb, 1e-5, layer, w, V, ws).first;
          CHECK((x17 != V - 5).all().item<bool>());
        }
      }
#endif
}

TEST_CASE("gpt-small decoding with LINEARNEXUS_DECODE_FUSION=1 draws the unfused tokens up to bf16 near-ties",
          "[decode][gpu]") {
  if (!at::hasCUDA()) LN_SKIP("no CUDA device in this LibTorch/machine");
  PluginHost host;
  // GPT-2's own form (LayerNorm, learned positions, biases) and the presets' default (RMSNorm, RoPE).
  for (const std::string extra :
       {"norm: layernorm, positions: learned, blocks: {attention: {n_head: 12, mlp: gelu, rope: false, qkv_bias: true, "
        "proj_bias: true, mlp_bias: true}}",
        "blocks: {attention: {n_head: 12, mlp: gelu}}"}) {
    INFO("model " << extra);
    Experiment e = lntest::parse(
        "data: {path: \"builtin:arithmetic\"}\nmodel: {preset: gpt-small, max_seq_len: 256, " + extra + "}\n", host);
    torch::manual_seed(5);
    auto m = std::make_shared<LMModel>(e.model_config(20), host.registry());
    {
      torch::NoGradGuard g;
      for (auto& kv : m->named_parameters()) {
        if (kv.key() == "wte.weight") kv.value().mul_(20.0);  // a peaked next-token distribution: few ties
        if (kv.key().find("bias") != std::string::npos) kv.value().normal_(0, 0.05);
      }
    }
    m->eval();
    m->to(at::kCUDA);
    m->set_compute_dtype(at::kBFloat16);
    DecodeGenerator gen(*m, host.registry());
    SamplingParams greedy;
    greedy.temperature = 0;
    greedy.max_new_tokens = 16;
    std::vector<std::vector<int64_t>> prompts{{11, 400, 7, 9000}, {5}, {300, 301, 302, 303, 304, 305, 306}};
    for (int64_t rows : {1, 3}) {
      const std::vector<std::vector<int64_t>> batch(prompts.begin(), prompts.begin() + rows);
      GeneratedBatch off = gen.generate(batch, greedy, 1);
      ::setenv("LINEARNEXUS_DECODE_FUSION", "1", 1);
      gen.clear();  // a fresh capture: the switch is read while the step is captured
      GeneratedBatch on = gen.generate(batch, greedy, 1);
      ::unsetenv("LINEARNEXUS_DECODE_FUSION");
      gen.clear();
      for (size_t r = 0; r < off.completions.size(); ++r) {
        size_t same = 0;
        const auto &a = off.completions[r], &b = on.completions[r];
        while (same < a.size() && same < b.size() && a[same] == b[same]) ++same;
        INFO("rows " << rows << " row " << r << ": the first " << same << " tokens agree");
        CHECK(same >= 8);
        for (size_t c = 0; c < same; ++c)
          CHECK(std::abs(off.logprobs[r][c].item<double>() - on.logprobs[r][c].item<double>()) < 0.05);
        if (same < a.size() && same < b.size())  // a near-tie: both drew a near-maximum token
          CHECK(std::abs(off.logprobs[r][same].item<double>() - on.logprobs[r][same].item<double>()) < 0.05);
      }
    }
  }
}
