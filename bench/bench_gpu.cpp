// GPU training and decoding throughput of our models, beside bench/reference.py (the same models in
// plain PyTorch). Built only where LibTorch has CUDA. Run both with bench/run_gpu_bench.sh.
// Usage: bench_gpu [--batches 48,32,24,16] [--steps 10] [--no-profile] [--no-decode]
//                  [--models gpt-small,gpt-small-char,gpt-small-ckpt,gpt-medium,mamba-small,jamba-small]
//                  [--train MODEL]...
// --train (repeatable) measures only the training rows of those models, in order (each at the
// first batch of --batches that fits): MODEL is a preset name, or NAME=MODEL_MAP with a YAML map of
// the model section, e.g. 'gdn={hidden_size: 768, n_layer: 12, block_pattern: [gated_deltanet]}'; with a
// breakdown of each (the profile) unless --no-profile.
//
// Prints one JSON object per line after "RESULT " (the table in docs/benchmarks.md is made from
// them by reference.py --table):
//   matmul     bf16 8192^3 matmul rate (the MFU denominator), random operands;
//   train      gpt-small (T = 1024, bf16 autocast, fp32 master weights, AdamW, grad clip 1.0): the
//              largest batch of --batches that fits; gpt-small-char (the same shape, a 65-token
//              character vocabulary), gpt-small-ckpt (gpt-small with activation checkpointing of
//              every block), mamba-small and jamba-small at that batch (or the largest smaller one
//              of --batches that fits); gpt-medium at B = 32 (the 80 GB-card check).
//              Step = forward, fp32 loss, backward, clip, optimizer step, zero_grad, as the sft
//              trainer does it; no host-device sync inside the timed steps;
//   decode     128-token prompt, then 512 greedy tokens through the host's generator (DecodeGenerator),
//              batch 1 and 16; with --decode-only, only decoding: more models, batches and contexts
//              (decode_bench; those of --models when given) and a profile of the step;
//   breakdown  where one training step's GPU time goes, for each model trained (LibTorch's Kineto
//              profiler: kernel time by kind, and wall time minus kernel time = launch gaps / host
//              overhead).
#include <c10/cuda/CUDACachingAllocator.h>
#include <torch/csrc/autograd/profiler_kineto.h>
#include <torch/cuda.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "linearnexus/host/config.h"
#include "linearnexus/host/generator.h"
#include "linearnexus/generate.h"
#include "linearnexus/model.h"
#include "linearnexus/optimizer.h"
#include "linearnexus/host/plugin_host.h"
#include "linearnexus/host/runtime.h"
#include "linearnexus/host/session.h"
#include "linearnexus/trainer.h"

using namespace linearnexus;

namespace {

const int64_t kT = 1024, kVocab = 50257;

double now_s() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

// Seconds per call of f: `warm` calls, then `iters` calls with one sync at the end (the host runs
// ahead of the GPU as it does in training).
double time_per_call(const std::function<void()>& f, int warm, int iters) {
  for (int i = 0; i < warm; ++i) f();
  torch::cuda::synchronize();
  const double t0 = now_s();
  for (int i = 0; i < iters; ++i) f();
  torch::cuda::synchronize();
  return (now_s() - t0) / iters;
}

void reset_peak() { c10::cuda::CUDACachingAllocator::resetPeakStats(0); }
// Peak bytes held by tensors (index 0: all pools), as torch.cuda.max_memory_allocated().
double peak_gib() {
  return static_cast<double>(c10::cuda::CUDACachingAllocator::getDeviceStats(0).allocated_bytes[0].peak) / (1 << 30);
}

bool is_oom(const std::exception& e) { return std::strstr(e.what(), "out of memory") != nullptr; }

std::string json(const std::map<std::string, std::string>& kv) {
  std::ostringstream o;
  o << "{";
  bool first = true;
  for (const auto& [k, v] : kv) o << (first ? "" : ", ") << "\"" << k << "\": " << v, first = false;
  o << "}";
  return o.str();
}
std::string str(const std::string& s) { return "\"" + s + "\""; }
std::string num(double v) {
  char b[64];
  std::snprintf(b, sizeof b, "%.6g", v);
  return b;
}
void result(const std::map<std::string, std::string>& kv) {
  std::printf("RESULT %s\n", json(kv).c_str());
  std::fflush(stdout);
}

// A preset model on the GPU with bf16 compute, and its AdamW (nanoGPT's settings).
struct Setup {
  int64_t vocab = kVocab;
  Experiment exp;
  std::shared_ptr<LMModel> model;
  std::vector<NamedParameter> params;
  std::shared_ptr<Optimizer> opt;
};

// `model`: a preset name, or NAME=MODEL_MAP (a YAML map of the model section).
std::unique_ptr<Setup> make_setup(PluginHost& host, const std::string& model, int64_t vocab = kVocab) {
  auto s = std::make_unique<Setup>();
  s->vocab = vocab;
  // A preset fixes its vocabulary (gpt-small: 50257); another one needs vocab_size: auto, the vocab given here.
  const std::string vocab_key = vocab == kVocab ? "" : ", vocab_size: auto";
  const auto eq = model.find('=');
  const std::string section = eq == std::string::npos ? "{preset: " + model + vocab_key + "}" : model.substr(eq + 1);
  s->exp = parse_experiment("data: {path: \"builtin:arithmetic\"}\nmodel: " + section +
                                "\noptimizer: {name: adamw, lr: 6e-4, betas: [0.9, 0.95], weight_decay: 0.1}\n",
                            "bench_gpu", "", {}, host);
  torch::manual_seed(0);
  s->model = std::make_shared<LMModel>(s->exp.model_config(vocab), host.registry());
  s->model->to(at::kCUDA);
  s->model->set_compute_dtype(at::kBFloat16);
  s->params = s->model->optimizer_parameters();
  s->opt = host.registry().make_optimizer("adamw", s->params, s->exp.optimizer);
  return s;
}

struct Step {
  Setup& s;
  at::Tensor x, y;
  Step(Setup& s_, int64_t B) : s(s_) {
    auto o = at::TensorOptions().dtype(at::kLong).device(at::kCUDA);
    x = at::randint(0, s.vocab, {B, kT}, o);
    y = at::randint(0, s.vocab, {B, kT}, o);
  }
  void forward_backward() { s.model->next_token_loss(x, y).backward(); }
  void update() {
    clip_grad_norm(s.params, 1.0);
    s.opt->step();
    s.opt->zero_grad(s.params);
  }
  void operator()() {
    forward_backward();
    update();
  }
};

struct TrainResult {
  int64_t batch = 0;
  double s_per_step = 0, peak = 0;
};

// The first batch of `batches` whose step fits, timed.
TrainResult train(Setup& s, const std::vector<int64_t>& batches, int steps) {
  s.model->train();
  for (int64_t B : batches) {
    try {
      reset_peak();
      Step step(s, B);
      const double sec = time_per_call(step, 3, steps);
      return {B, sec, peak_gib()};
    } catch (const std::exception& e) {
      if (!is_oom(e)) throw;
      s.opt->zero_grad(s.params);
      c10::cuda::CUDACachingAllocator::emptyCache();
      std::fprintf(stderr, "batch %lld does not fit; trying a smaller one\n", static_cast<long long>(B));
    }
  }
  return {};
}

// Decoding through a generator of the model (static caches, bf16 inference weights, the
// step captured in a CUDA graph; `step` "eager" for each block's usual path): B random prompts of
// `prompt` tokens, `n` greedy tokens. Tokens per second of the decoding alone: the time of n new
// tokens minus the time of 1 (prefill and the first token), over B (n - 1) tokens; both warmed up
// first (the first call of a shape captures its graph), best of two.
double decode_tokens_per_s(DecodeGenerator& gen, int64_t B, int64_t prompt, int64_t n,
                           const std::string& step = "auto") {
  gen.options.step = step;
  auto ids = at::randint(0, kVocab, {B, prompt}, at::kLong);
  std::vector<std::vector<int64_t>> prompts(B);
  for (int64_t b = 0; b < B; ++b)
    prompts[b] = std::vector<int64_t>(ids[b].data_ptr<int64_t>(), ids[b].data_ptr<int64_t>() + prompt);
  auto run = [&](int64_t new_tokens) {
    SamplingParams sp;
    sp.temperature = 0;
    sp.max_new_tokens = new_tokens;
    torch::cuda::synchronize();
    const double t0 = now_s();
    gen.generate(prompts, sp, 1);
    torch::cuda::synchronize();
    return now_s() - t0;
  };
  run(n);
  run(1);
  const double full = std::min(run(n), run(n)), first = std::min(run(1), run(1));
  gen.options.step = "auto";
  return static_cast<double>(B * (n - 1)) / std::max(full - first, 1e-9);
}

// GPU kernel time by kind over `iters` calls of f (ms per call), from the Kineto profiler; the
// kernels that took longest go to *top.
std::map<std::string, double> kernel_ms(const std::function<void()>& f, int iters,
                                        std::vector<std::pair<double, std::string>>* top = nullptr,
                                        double* kernels_per_call = nullptr,
                                        std::vector<std::pair<double, std::string>>* gaps = nullptr) {
  namespace prof = torch::autograd::profiler;
  using torch::profiler::impl::ActivityType;
  const std::set<ActivityType> acts{ActivityType::CPU, ActivityType::CUDA};
  torch::profiler::impl::ProfilerConfig cfg(torch::profiler::impl::ProfilerState::KINETO);
  f();
  torch::cuda::synchronize();
  prof::prepareProfiler(cfg, acts);
  prof::enableProfiler(cfg, acts);
  for (int i = 0; i < iters; ++i) f();
  torch::cuda::synchronize();
  auto res = prof::disableProfiler();
  std::map<std::string, double> ms, by_name;
  std::vector<std::tuple<uint64_t, uint64_t, std::string>> spans;  // GPU activity: start, end, name
  for (const auto& e : res->events()) {
    if (e.deviceType() != c10::DeviceType::CUDA) continue;
    if (gaps) spans.emplace_back(e.startNs(), e.endNs(), e.name());
    std::string n = e.name();
    std::transform(n.begin(), n.end(), n.begin(), ::tolower);
    std::string kind = "norms/elementwise/other";
    auto has = [&](const char* p) { return n.find(p) != std::string::npos; };
    if (has("flash") || has("fmha") || has("attention") || has("mem_eff"))
      kind = "attention";
    else if (has("gemm") || has("nvjet") || has("xmma") || has("cutlass") || has("cublas") || has("sm90_"))
      kind = "matmul";
    else if (has("memcpy") || has("memset"))
      kind = "memcpy/memset";
    ms[kind] += static_cast<double>(e.durationNs()) / 1e6 / iters;
    if (kernels_per_call) *kernels_per_call += 1.0 / iters;
    by_name[e.name()] += static_cast<double>(e.durationNs()) / 1e6 / iters;
  }
  if (gaps) {
    // Idle time on the GPU before each kernel, summed by (previous kernel -> next kernel): where the
    // host falls behind.
    std::sort(spans.begin(), spans.end());
    std::map<std::string, double> by_pair;
    uint64_t busy_until = 0;
    std::string prev = "(start)";
    for (const auto& [t0, t1, n] : spans) {
      if (busy_until && t0 > busy_until)
        by_pair[prev.substr(0, 50) + " -> " + n.substr(0, 50)] += (t0 - busy_until) / 1e6 / iters;
      if (t1 > busy_until) busy_until = t1, prev = n;
    }
    for (const auto& [n, v] : by_pair) gaps->push_back({v, n});
    std::sort(gaps->rbegin(), gaps->rend());
    if (gaps->size() > 15) gaps->resize(15);
  }
  if (top) {
    // Kernel names without the namespaces that every ATen kernel shares, cut to a readable length.
    auto shorten = [](std::string n) {
      for (const std::string drop : {"void ", "at::native::", "(anonymous namespace)::", "\""}) {
        for (size_t p; (p = n.find(drop)) != std::string::npos;) n.erase(p, drop.size());
      }
      return n.substr(0, 110);
    };
    for (const auto& [n, v] : by_name) top->push_back({v, shorten(n)});
    std::sort(top->rbegin(), top->rend());
    if (top->size() > 20) top->resize(20);
  }
  return ms;
}

void breakdown(Setup& s, int64_t B, const std::string& name) {
  s.model->train();
  Step step(s, B);
  const double wall_fb = 1e3 * time_per_call(
                                   [&] {
                                     step.forward_backward();
                                     s.opt->zero_grad(s.params);
                                   },
                                   2, 5);
  step.forward_backward();
  const double wall_up = 1e3 * time_per_call(
                                   [&] {
                                     step.update();
                                     step.forward_backward();
                                   },
                                   1, 5) -
                         wall_fb;
  const double wall_step = 1e3 * time_per_call(step, 1, 5);
  std::vector<std::pair<double, std::string>> top, gaps;
  auto fb = kernel_ms(
      [&] {
        step.forward_backward();
        s.opt->zero_grad(s.params);
      },
      3, &top, nullptr, &gaps);
  step.forward_backward();
  auto up = kernel_ms(
      [&] {
        step.update();
        step.forward_backward();
      },
      3);
  double fb_busy = 0;
  for (auto& [k, v] : fb) fb_busy += v;
  for (auto& [k, v] : up) v -= fb.count(k) ? fb[k] : 0.0;  // the update's own kernels
  double up_busy = 0;
  for (auto& [k, v] : up) up_busy += v;
  std::map<std::string, std::string> r{{"kind", str("breakdown")},
                                       {"model", str(name)},
                                       {"batch", num(B)},
                                       {"step_ms", num(wall_step)},
                                       {"fwd_bwd_ms", num(wall_fb)},
                                       {"update_ms", num(wall_up)},
                                       {"optimizer_kernels_ms", num(up_busy)},
                                       {"fwd_bwd_gaps_ms", num(wall_fb - fb_busy)},
                                       {"update_gaps_ms", num(wall_up - up_busy)}};
  for (auto& [k, v] : fb) r["fb:" + k] = num(v);
  // Autocast's weight casts against a bf16 copy kept by the optimizer: each forward casts every fp32
  // matrix to bf16 (read 4 + write 2 bytes a value); a kept copy must be rewritten after every update
  // instead (the same 6 bytes a value: at::_fused_adamw_ writes only the fp32 weights) and its
  // gradient arrives in bf16, to be cast to fp32 as autocast's is. Timed here on their own: the casts
  // as autocast runs them, one per matrix, and copies into preallocated bf16 buffers.
  {
    std::vector<at::Tensor> w32, w16;
    double bytes = 0;
    for (const auto& p : s.params)
      if (p.param.dim() >= 2 && p.param.scalar_type() == at::kFloat) {
        w32.push_back(p.param.detach());
        w16.push_back(at::empty_like(p.param, p.param.options().dtype(at::kBFloat16)));
        bytes += 6.0 * static_cast<double>(p.param.numel());
      }
    r["weight_casts_ms"] = num(1e3 * time_per_call(
                                         [&] {
                                           for (auto& w : w32) (void)w.to(at::kBFloat16);
                                         },
                                         2, 10));
    r["kept_copy_update_ms"] = num(1e3 * time_per_call(
                                             [&] {
                                               for (size_t i = 0; i < w32.size(); ++i) w16[i].copy_(w32[i]);
                                             },
                                             2, 10));
    r["weight_cast_gb"] = num(bytes / 1e9);
  }
  std::string t = "\"";
  for (auto& [v, n] : top) t += n + " " + num(v) + " ms; ";
  r["top"] = t + "\"";
  std::string g = "\"";
  for (auto& [v, n] : gaps) g += n + " " + num(v) + " ms; ";
  for (char& c : g)
    if (c == '"' && &c != &g.front()) c = '\'';
  r["gaps"] = g + "\"";
  result(r);
}

// Where a decode step's GPU time goes: the engine's static step run eagerly (the kernels a graph
// replays) for 33 tokens minus 1 token, after a 128-token prompt: kernel time by kind per token,
// kernels per token, and the longest kernels; beside the graphed wall time per token.
void decode_profile(DecodeGenerator& generator, const std::string& name, int64_t B) {
  std::vector<std::vector<int64_t>> prompts(B, std::vector<int64_t>(128, 7));
  auto gen = [&](int64_t n) {
    return [&generator, &prompts, n] {
      SamplingParams sp;
      sp.temperature = 0;
      sp.max_new_tokens = n;
      generator.generate(prompts, sp, 1);
    };
  };
  const double wall = 1e3 * (time_per_call(gen(33), 1, 3) - time_per_call(gen(1), 1, 3)) / 32;
  generator.options.step = "static";
  std::vector<std::pair<double, std::string>> top;
  double n33 = 0, n1 = 0;
  auto k = kernel_ms(gen(33), 2, &top, &n33);
  auto k1 = kernel_ms(gen(1), 2, nullptr, &n1);
  generator.options.step = "auto";
  std::map<std::string, std::string> r{{"kind", str("decode_profile")},
                                       {"model", str(name)},
                                       {"batch", num(B)},
                                       {"graphed_wall_ms_per_token", num(wall)},
                                       {"kernels_per_token", num((n33 - n1) / 32)}};
  double busy = 0;
  for (auto& [kind, v] : k) {
    const double per_token = (v - (k1.count(kind) ? k1[kind] : 0.0)) / 32;
    r["k:" + kind] = num(per_token);
    busy += per_token;
  }
  r["kernel_ms_per_token"] = num(busy);
  std::string t = "\"";
  for (auto& [v, n] : top) t += n + " " + num(v / 33) + " ms; ";
  r["top"] = t + "\"";
  result(r);
}

// Causal attention forward + backward at training shape [B, 12, 1024, 64] bf16, with and without
// cuDNN's attention backend (compat::attention uses it where queries and keys have one length).
void sdpa_variants(int64_t B) {
  auto o = at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA);
  auto q = at::randn({B, 12, kT, 64}, o).requires_grad_(), k = at::randn({B, 12, kT, 64}, o).requires_grad_(),
       v = at::randn({B, 12, kT, 64}, o).requires_grad_();
  auto g = at::randn({B, 12, kT, 64}, o);
  for (bool cudnn : {false, true}) {
    at::globalContext().setSDPUseCuDNN(cudnn);
    const double ms = 1e3 * time_per_call(
                                [&] {
                                  auto y = at::scaled_dot_product_attention(q, k, v, {}, 0.0, true);
                                  y.backward(g);
                                },
                                3, 10);
    result({{"kind", str("sdpa")}, {"cudnn", cudnn ? "true" : "false"}, {"batch", num(B)}, {"fwd_bwd_ms", num(ms)}});
  }
}

void decode_result(const std::string& model, const std::string& impl, int64_t B, int64_t prompt, int64_t n,
                   double tps) {
  result({{"kind", str("decode")},
          {"impl", str(impl)},
          {"model", str(model)},
          {"batch", num(B)},
          {"prompt", num(prompt)},
          {"new_tokens", num(n)},
          {"tokens_per_s", num(tps)}});
}

// The decode table (--decode-only): gpt-small, mla-small (gpt-small with MLA blocks) and
// mamba-small at B = 1, 16, 64 and contexts 512 (256-token prompts + 256 new) and 2048 (1792 + 256),
// the 128 + 512 at B = 1 and 16, gpt-small's eager step at B = 1, and a profile of the step
// at B = 1.
void decode_bench(PluginHost& host, const std::function<bool(const std::string&)>& wanted) {
  const std::vector<std::pair<std::string, std::string>> models{
      {"gpt-small", "{preset: gpt-small, max_seq_len: 2048}"},
      {"mamba-small", "{preset: mamba-small}"},
      {"mla-small",
       "{preset: gpt-small, max_seq_len: 2048, block_pattern: [mla], blocks: {mla: {n_head: 12, mlp: gelu}}}"}};
  for (const auto& [name, yaml] : models) {
    if (!wanted(name)) continue;
    c10::cuda::CUDACachingAllocator::emptyCache();
    auto s = make_setup(host, name + "=" + yaml);
    DecodeGenerator gen(*s->model, host.registry());
    for (int64_t B : {1, 16}) decode_result(name, "linearnexus", B, 128, 512, decode_tokens_per_s(gen, B, 128, 512));
    for (int64_t ctx : {512, 2048})
      for (int64_t B : {1, 16, 64})
        decode_result(name, "linearnexus", B, ctx - 256, 256, decode_tokens_per_s(gen, B, ctx - 256, 256));
    if (name == "gpt-small")
      decode_result(name, "linearnexus-eager-step", 1, 128, 128, decode_tokens_per_s(gen, 1, 128, 128, "eager"));
    decode_profile(gen, name, 1);
  }
}

std::vector<int64_t> parse_list(const std::string& s) {
  std::vector<int64_t> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, ',');) out.push_back(std::stoll(item));
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int64_t> batches{48, 32, 24, 16, 8};
  int steps = 10;
  bool profile = true, decode = true, decode_only = false, explicit_models = false;
  std::vector<std::string> train_only;
  std::string models = "gpt-small,gpt-small-char,gpt-small-ckpt,gpt-medium,mamba-small,jamba-small";
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--batches" && i + 1 < argc)
      batches = parse_list(argv[++i]);
    else if (a == "--steps" && i + 1 < argc)
      steps = std::atoi(argv[++i]);
    else if (a == "--no-profile")
      profile = false;
    else if (a == "--no-decode")
      decode = false;
    else if (a == "--models" && i + 1 < argc)
      models = argv[++i], explicit_models = true;
    else if (a == "--train" && i + 1 < argc)
      train_only.push_back(argv[++i]);
    else if (a == "--decode-only")
      decode_only = true;
    else {
      std::fprintf(stderr,
                   "usage: bench_gpu [--batches 48,32,24,16] [--steps 10] [--no-profile] [--no-decode] [--decode-only] "
                   "[--models gpt-small,gpt-small-char,gpt-small-ckpt,gpt-medium,mamba-small,jamba-small] "
                   "[--train MODEL]...\n");
      return 2;
    }
  }
  models = "," + models + ",";
  auto wanted = [&](const std::string& name) { return models.find("," + name + ",") != std::string::npos; };
  if (!torch::cuda::is_available()) {
    std::fprintf(stderr, "bench_gpu: no CUDA device; this benchmark runs on a GPU machine only\n");
    return 1;
  }
  try {
    init_runtime();
    PluginHost host;
    if (decode_only) {
      decode_bench(host, [&](const std::string& name) { return explicit_models ? wanted(name) : true; });
      return 0;
    }
    {
      auto o = at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA);
      auto a = at::randn({8192, 8192}, o), b = at::randn({8192, 8192}, o);
      const double sec = time_per_call([&] { at::matmul(a, b); }, 3, 20);
      result({{"kind", str("matmul")}, {"tflops", num(2.0 * 8192.0 * 8192.0 * 8192.0 / sec / 1e12)}});
    }
    for (const auto& model : train_only) {
      c10::cuda::CUDACachingAllocator::emptyCache();
      auto s = make_setup(host, model);
      auto r = train(*s, batches, steps);
      result({{"kind", str("train")},
              {"impl", str("linearnexus")},
              {"model", str(model.substr(0, model.find('=')))},
              {"batch", num(r.batch)},
              {"seq", num(kT)},
              {"params", num(static_cast<double>(s->model->num_parameters()))},
              {"ms_per_step", num(1e3 * r.s_per_step)},
              {"tokens_per_s", num(r.batch ? r.batch * kT / r.s_per_step : 0)},
              {"peak_gib", num(r.peak)}});
      if (profile && r.batch) {
        try {
          breakdown(*s, r.batch, model.substr(0, model.find('=')));
        } catch (const std::exception& e) {  // the profiler is a bonus: the numbers above stand without it
          std::fprintf(stderr, "bench_gpu: breakdown failed: %s\n", e.what());
        }
      }
    }
    if (!train_only.empty()) return 0;
    int64_t gpt_batch = batches.front();
    if (wanted("gpt-small")) {
      auto s = make_setup(host, "gpt-small");
      const auto& d = s->model->config().dims;
      auto r = train(*s, batches, steps);
      if (r.batch == 0) throw std::runtime_error("gpt-small: no batch of --batches fits");
      gpt_batch = r.batch;
      // Per token: 6 N (the tied embedding counted once: it is the LM head's matmul) + 12 L C T for
      // attention scores and values, forward and backward, counting the full T x T (as nanoGPT/PaLM).
      const double n = static_cast<double>(s->model->num_parameters());
      const double flops_per_token = 6.0 * n + 12.0 * d.n_layer * d.hidden_size * kT;
      result({{"kind", str("train")},
              {"impl", str("linearnexus")},
              {"model", str("gpt-small")},
              {"batch", num(r.batch)},
              {"seq", num(kT)},
              {"params", num(n)},
              {"ms_per_step", num(1e3 * r.s_per_step)},
              {"tokens_per_s", num(r.batch * kT / r.s_per_step)},
              {"peak_gib", num(r.peak)},
              {"flops_per_token", num(flops_per_token)}});
      if (decode) {
        DecodeGenerator gen(*s->model, host.registry());
        for (int64_t B : {1, 16})
          decode_result("gpt-small", "linearnexus", B, 128, 512, decode_tokens_per_s(gen, B, 128, 512));
        decode_profile(gen, "gpt-small", 1);
        sdpa_variants(gpt_batch);
      }
      if (profile) {
        try {
          breakdown(*s, gpt_batch, "gpt-small");
        } catch (const std::exception& e) {  // the profiler is a bonus: the numbers above stand without it
          std::fprintf(stderr, "bench_gpu: breakdown failed: %s\n", e.what());
        }
      }
    }
    // At the gpt's batch (or the largest smaller one that fits): gpt-small with a character
    // vocabulary (65 tokens, as tiny Shakespeare's), the Mamba models: mamba-small, and jamba-small
    // (7 mamba : 1 attention).
    for (const std::string name : {"gpt-small-char", "gpt-small-ckpt", "gpt-medium", "mamba-small", "jamba-small"}) {
      if (!wanted(name)) continue;
      c10::cuda::CUDACachingAllocator::emptyCache();
      const bool chars = name == "gpt-small-char", gpt = name.rfind("gpt-", 0) == 0;
      auto s = chars ? make_setup(host, "gpt-small", 65)
                     : make_setup(host, name == "gpt-small-ckpt" ? std::string("gpt-small") : name);
      if (name == "gpt-small-ckpt") s->model->set_activation_checkpointing(1);
      std::vector<int64_t> mb;
      for (int64_t B : batches)
        if (B <= gpt_batch) mb.push_back(B);
      if (name == "gpt-medium") mb = {32};
      auto r = train(*s, mb, steps);
      const double n = static_cast<double>(s->model->num_parameters());
      std::map<std::string, std::string> row{{"kind", str("train")},
                                             {"impl", str("linearnexus")},
                                             {"model", str(name)},
                                             {"batch", num(r.batch)},
                                             {"seq", num(kT)},
                                             {"params", num(n)},
                                             {"ms_per_step", num(1e3 * r.s_per_step)},
                                             {"tokens_per_s", num(r.batch ? r.batch * kT / r.s_per_step : 0)},
                                             {"peak_gib", num(r.peak)}};
      const auto& d = s->model->config().dims;
      if (gpt) row["flops_per_token"] = num(6.0 * n + 12.0 * d.n_layer * d.hidden_size * kT);
      result(row);
      if (name == "mamba-small" && decode) {
        DecodeGenerator gen(*s->model, host.registry());
        for (int64_t B : {1, 16})
          decode_result(name, "linearnexus", B, 128, 512, decode_tokens_per_s(gen, B, 128, 512));
        decode_profile(gen, name, 1);
      }
      if (profile && r.batch && !gpt) {
        try {
          breakdown(*s, r.batch, name);
        } catch (const std::exception& e) {
          std::fprintf(stderr, "bench_gpu: breakdown failed: %s\n", e.what());
        }
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_gpu: %s\n", e.what());
    return 1;
  }
  return 0;
}
