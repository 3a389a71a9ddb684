// LoRA (model.lora, core/sdk/src/lora.cpp; issue 31): adapters on every block kind without the block
// knowing (only they train; the adapted model equals one holding the merged weights), a LoRA
// fine-tune from a trained base (held-out loss falls, the base stays bit for bit, exact resume),
// convert merge-lora (same logits), hf-export of a LoRA run (= the merged run's) and peft-export
// (PEFT's update rule on the base's export gives the merged export).
#include <ATen/ATen.h>

#include <random>

#include "linearnexus/host/run_checkpoint.h"
#include "linearnexus/host/safetensors.h"
#include "linearnexus/lora.h"
#include "test_util.h"

using namespace linearnexus;
using namespace lntest;

TEST_CASE("LoRA on every block kind: only the adapters get gradients, the model equals one holding W0 + scale B A",
          "[lora]") {
  PluginHost& host = build_plugins();
  for (const char* kind :
       {"attention", "swa", "mamba", "mamba2", "mla", "gla", "deltanet", "gated_deltanet", "kda", "rwkv7"}) {
    INFO(kind);
    const std::string model =
        std::string("model: {hidden_size: 64, n_layer: 2, max_seq_len: 32, block_pattern: [") + kind + "]";
    Experiment with = parse("data: {path: x}\n" + model + ", lora: {rank: 4, alpha: 8}}\n", host);
    Experiment without = parse("data: {path: x}\n" + model + "}\n", host);
    torch::manual_seed(1);
    LMModel m(with.model_config(50), host.registry());
    REQUIRE(m.lora());
    REQUIRE(!m.lora()->sites().empty());
    for (const auto& np : m.optimizer_parameters()) CHECK(np.name.rfind("lora.", 0) == 0);
    {
      torch::NoGradGuard g;
      for (const auto& s : m.lora()->sites()) s.B.normal_(0, 0.05);  // B starts at 0: make the adapters count
    }
    auto idx = at::randint(0, 50, {2, 12}, at::kLong);
    auto logits = m.forward(idx);
    // A plain model with the merged weights computes the same.
    LMModel plain(without.model_config(50), host.registry());
    TensorMap tensors = model_tensors(m, "model.");
    for (const auto& [name, w] : m.lora()->merged_weights()) tensors["model." + name] = w;
    for (auto it = tensors.lower_bound("model.lora."); it != tensors.end() && it->first.rfind("model.lora.", 0) == 0;)
      it = tensors.erase(it);  // the adapters are not the plain model's
    load_model_tensors(plain, tensors, "merged");
    CHECK(at::allclose(logits, plain.forward(idx), 1e-4, 1e-5));
    logits.square().mean().backward();
    for (const auto& kv : m.named_parameters()) {
      INFO(kv.key());
      const bool adapter = kv.key().rfind("lora.", 0) == 0;
      CHECK(kv.value().grad().defined() == adapter);
      if (adapter) CHECK(kv.value().grad().abs().sum().item<double>() > 0);
    }
    // Without gradients the merged weights are made once and reused until A, B or W0 change.
    torch::NoGradGuard g;
    CHECK(at::allclose(m.forward(idx), plain.forward(idx), 1e-4, 1e-5));
    m.lora()->sites()[0].B.add_(0.1);
    CHECK(!at::allclose(m.forward(idx), plain.forward(idx), 1e-4, 1e-5));
  }
}

TEST_CASE("model.lora.targets: globs, roles and a clear error for a target that selects nothing", "[lora]") {
  PluginHost& host = build_plugins();
  auto sites = [&](const std::string& targets) {
    Experiment e = parse(
        "data: {path: x}\nmodel: {hidden_size: 32, n_layer: 2, max_seq_len: 16, block_pattern: [attention], "
        "lora: {rank: 2, targets: " +
            targets + "}}\n",
        host);
    LMModel m(e.model_config(20), host.registry());
    std::vector<std::string> names;
    for (const auto& s : m.lora()->sites()) names.push_back(s.name);
    return names;
  };
  CHECK(sites("[qkv]") == std::vector<std::string>{"blocks.0.qkv", "blocks.1.qkv"});
  CHECK(sites("[blocks.1.proj]") == std::vector<std::string>{"blocks.1.proj"});
  CHECK(sites("[matrix]").size() == sites("[all-linear]").size());
  CHECK(sites("['mlp.*']").size() == 6);  // up, gate and down per layer (SwiGLU)
  CHECK_CONTAINS(error_of([&] { sites("[q_proj]"); }),
                 "model.lora.targets: 'q_proj' selects no Linear layer of the blocks; there are: ");
  CHECK_CONTAINS(error_of([&] { sites("[q_proj]"); }), "qkv");
}

namespace {
// Sums written backwards ("12+35=74"): a task the base model (trained on builtin:arithmetic) does not know.
std::string reversed_sums(int n) {
  std::mt19937_64 rng(3);
  std::string out;
  for (int i = 0; i < n; ++i) {
    const int a = static_cast<int>(rng() % 1000), b = static_cast<int>(rng() % 1000);
    std::string c = std::to_string(a + b);
    out += std::to_string(a) + "+" + std::to_string(b) + "=" + std::string(c.rbegin(), c.rend()) + "\n";
  }
  return out;
}
at::Tensor logits_of(const std::string& run, const at::Tensor& idx) {
  LoadedModel lm = load_model_from_checkpoint(run, build_plugins());
  torch::NoGradGuard g;
  return lm.model->forward(idx);
}
}  // namespace

TEST_CASE(
    "a LoRA fine-tune: held-out loss falls, the base stays bit for bit, resume is exact, merge-lora, hf-export, peft-export agree",
    "[lora][e2e]") {
  TempDir t;
  const std::string model =
      "model: {hidden_size: 64, n_layer: 2, max_seq_len: 32, block_pattern: [attention], blocks: {attention: {n_head: 4}}}\n";
  train_experiment(
      "data: {path: 'builtin:arithmetic', seq_len: 32}\n" + model +
          "optimizer: {name: adamw, lr: 0.003}\nschedule: {warmup_steps: 5}\n"
          "trainer: {name: sft, max_steps: 60, batch_size: 16, log_every: 60, eval_every: 60, eval_batches: 2}\n",
      {"trainer.out_dir=" + (t / "base")});
  write_text(t / "rev.txt", reversed_sums(20000));
  const std::string lora =
      "data: {path: '" + (t / "rev.txt") +
      "', seq_len: 32}\n"
      "model: {preset: init_from, lora: {rank: 8, alpha: 16}}\n"
      "optimizer: {name: adamw, lr: 0.003}\nschedule: {warmup_steps: 5}\n"
      "trainer: {name: sft, max_steps: 60, batch_size: 16, log_every: 1, eval_every: 10, eval_batches: 4}\n";
  const std::vector<std::string> from_base = {"trainer.init_from=" + (t / "base")};
  auto with = [&](std::vector<std::string> a) {
    a.insert(a.end(), from_base.begin(), from_base.end());
    return a;
  };
  train_experiment(lora, with({"trainer.out_dir=" + (t / "lora")}));
  auto m = read_metrics(t / "lora");
  INFO("held-out loss " << m[10]["val_loss"] << " -> " << m[60]["val_loss"]);
  CHECK(m[60]["val_loss"].get<double>() < m[10]["val_loss"].get<double>() - 0.1);

  // The base weights are the base run's, bit for bit; the adapters moved; only they have optimizer state.
  const auto base = load_safetensors(t / "base/latest.safetensors").tensors,
             tuned = load_safetensors(t / "lora/latest.safetensors").tensors;
  int adapters = 0;
  for (const auto& [name, v] : tuned) {
    if (name.rfind("model.lora.", 0) == 0) {
      ++adapters;
      continue;
    }
    if (name.rfind("model.", 0) == 0) {
      INFO(name);
      CHECK(at::equal(v, base.at(name)));
    }
    // Per-parameter optimizer state ("optim.<parameter>.<slot>"): the adapters' alone.
    if (name.rfind("optim.", 0) == 0 && name.find('.', 6) != std::string::npos) {
      INFO(name);
      CHECK(name.rfind("optim.lora.", 0) == 0);
    }
  }
  CHECK(adapters == 2 * 2 * 5);  // A and B of qkv, proj, mlp.up, mlp.gate, mlp.down, two layers

  // Stopped half way and resumed: the same losses.
  train_experiment(lora, with({"trainer.out_dir=" + (t / "split"), "trainer.stop_after=30"}));
  train_experiment(lora, with({"trainer.out_dir=" + (t / "split"), "trainer.resume=auto"}));
  auto s = read_metrics(t / "split");
  for (int64_t step = 1; step <= 60; ++step) {
    INFO("step " << step);
    CHECK(s[step]["loss"].get<double>() == m[step]["loss"].get<double>());
  }

  // merge-lora: a plain run folder computing the same logits.
  auto r = run_cli("convert merge-lora '" + (t / "lora") + "' '" + (t / "merged") + "'");
  INFO(r.err);
  REQUIRE(r.code == 0);
  CHECK(read_text(t / "merged/config.yaml").find("lora:") == std::string::npos);
  const auto idx = at::randint(0, 13, {2, 24}, at::kLong);
  CHECK(at::allclose(logits_of(t / "lora", idx), logits_of(t / "merged", idx), 1e-5, 1e-6));

  // hf-export of the LoRA run is the merged run's export; peft-export's adapters, applied as PEFT
  // does (W + lora_alpha / r * B A) to the base's export, give it too.
  for (const auto& [run, out] : std::vector<std::pair<std::string, std::string>>{
           {"lora", "hf_lora"}, {"merged", "hf_merged"}, {"base", "hf_base"}}) {
    r = run_cli("convert hf-export '" + (t / run) + "' '" + (t / out) + "'");
    INFO(run << ": " << r.err);
    REQUIRE(r.code == 0);
  }
  r = run_cli("convert peft-export '" + (t / "lora") + "' '" + (t / "peft") + "'");
  INFO(r.err);
  REQUIRE(r.code == 0);
  const auto hf_lora = load_safetensors(t / "hf_lora/model.safetensors").tensors;
  const auto hf_merged = load_safetensors(t / "hf_merged/model.safetensors").tensors;
  const auto hf_base = load_safetensors(t / "hf_base/model.safetensors").tensors;
  REQUIRE(hf_lora.size() == hf_merged.size());
  for (const auto& [name, v] : hf_merged) CHECK(at::allclose(hf_lora.at(name), v, 0, 0));
  const auto config = nlohmann::json::parse(read_text(t / "peft/adapter_config.json"));
  CHECK(config["peft_type"] == "LORA");
  CHECK(config["r"] == 8);
  CHECK(config["lora_alpha"].get<double>() == 16.0);
  CHECK(config["fan_in_fan_out"] == false);
  CHECK(config["base_model_name_or_path"] == t / "base");
  const auto adapters_hf = load_safetensors(t / "peft/adapter_model.safetensors").tensors;
  // Llama's modules: q, k, v (the fused qkv split by rows, sharing A), o, gate, up, down; two layers.
  CHECK(config["target_modules"].size() == 14);
  CHECK(adapters_hf.size() == 28);
  for (const auto& module : config["target_modules"]) {
    const std::string mod = module.get<std::string>();
    INFO(mod);
    const auto& A = adapters_hf.at("base_model.model." + mod + ".lora_A.weight");
    const auto& B = adapters_hf.at("base_model.model." + mod + ".lora_B.weight");
    CHECK(A.size(0) == 8);
    CHECK(B.size(1) == 8);
    const auto peft_merged = hf_base.at(mod + ".weight") + 2.0 * B.matmul(A);
    CHECK(at::allclose(peft_merged, hf_merged.at(mod + ".weight"), 1e-5, 1e-6));
  }
  CHECK(adapters_hf.count("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"));

  // Bad uses: one clear error each.
  check_one_clean_error(run_cli("convert merge-lora '" + (t / "base") + "' '" + (t / "x") + "'"),
                        "has no LoRA adapters");
  check_one_clean_error(run_cli("convert peft-export '" + (t / "lora") + "' '" + (t / "peft") + "'"), "is not empty");
  CHECK_CONTAINS(error_of([&] {
                   train_experiment(lora, {"trainer.init_from=" + (t / "lora"), "model.lora.rank=0",
                                           "trainer.out_dir=" + (t / "y")});
                 }),
                 "holds LoRA adapters (model.lora) and this model has none");
}
