// Training end to end: exact resume, learning real text, and the runner's error handling.
#include <nlohmann/json.hpp>

#include <cmath>
#include <map>

#include "catch.h"
#include "linearnexus/loss.h"
#include "linearnexus/host/run_checkpoint.h"
#include "linearnexus/host/session.h"
#include "linearnexus/trainer.h"
#include "test_util.h"

using namespace linearnexus;
using namespace lntest;

namespace {

const char* kSmallGPT = R"(
name: resume-test
seed: 7
data: {path: "builtin:arithmetic", seq_len: 32}
model: {hidden_size: 32, n_layer: 2, max_seq_len: 64, dropout: 0.1, block_pattern: [attention], blocks: {attention: {n_head: 4}}}
optimizer: {name: adamw, lr: 3e-3}
schedule: {warmup_steps: 10}
trainer: {name: sft, max_steps: 60, batch_size: 4, log_every: 1, eval_every: 20, eval_batches: 2, save_every: 1000}
)";

// Below the unigram entropy of the characters (3.31 nats): the model learned more than frequencies.
const double kCharGPTTarget = 3.2;

// Each optimizer at a learning rate that suits it (Muon's lr is its matrices' spectral step).
const std::vector<std::pair<std::string, std::vector<std::string>>> kOptimizers = {
    {"adamw", {"optimizer.lr=3e-3"}},
    {"muon", {"optimizer.lr=0.02", "optimizer.adamw_lr=3e-3"}},
    {"sophia", {"optimizer.lr=3e-3"}},
};

std::vector<std::string> with(std::vector<std::string> a, const std::vector<std::string>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

}  // namespace

TEST_CASE("the chunked head + cross-entropy equals matmul + cross_entropy in value and gradients", "[training][loss]") {
  torch::manual_seed(5);
  // V = 40000: chunks of 209 rows, so the 2 x 150 positions span two chunks, the second partial.
  const int64_t B = 2, T = 150, C = 16, V = 40000;
  auto h = torch::randn({B, T, C}).requires_grad_(true);
  auto W = (torch::randn({V, C}) * 0.5).requires_grad_(true);
  auto targets = torch::randint(V, {B, T}, torch::kLong);
  targets.index_put_({0, torch::indexing::Slice(0, 7)}, -1);  // positions without loss
  targets.index_put_({1, 149}, -1);
  auto h2 = h.detach().clone().requires_grad_(true), W2 = W.detach().clone().requires_grad_(true);
  auto fused = linearnexus::lm_head_loss(h, W, targets);
  auto reference = linearnexus::lm_loss(at::matmul(h2, W2.t()), targets);
  CHECK(fused.item<double>() == Approx(reference.item<double>()).epsilon(1e-5));
  (fused * 3).backward();  // a scaled upstream gradient reaches both inputs
  (reference * 3).backward();
  CHECK(torch::allclose(h.grad(), h2.grad(), 1e-4, 1e-7));
  CHECK(torch::allclose(W.grad(), W2.grad(), 1e-4, 1e-8));
  CHECK(h.grad()[0][3].abs().max().item<double>() == 0);  // no loss, no gradient
  torch::NoGradGuard g;                                   // without gradients: the value alone
  CHECK(linearnexus::lm_head_loss(h, W, targets).item<double>() == Approx(reference.item<double>()).epsilon(1e-5));
}

TEST_CASE("a resumed run logs exactly the losses of an uninterrupted one (30 + 30 == 60), every optimizer",
          "[training]") {
  for (const auto& [name, opt] : kOptimizers) {
    INFO("optimizer " << name);
    TempDir t;
    const auto o = with({"optimizer.name=" + name}, opt);
    train_experiment(kSmallGPT, with({"trainer.out_dir=" + (t / "full")}, o));
    train_experiment(kSmallGPT, with({"trainer.out_dir=" + (t / "split"), "trainer.stop_after=30"}, o));
    CHECK(read_metrics(t / "split").size() == 31);  // step 0 (val_loss) and 30 steps
    train_experiment(kSmallGPT, with({"trainer.out_dir=" + (t / "split"), "trainer.resume=auto"}, o));
    auto full = read_metrics(t / "full"), split = read_metrics(t / "split");
    REQUIRE(full.size() == 61);
    REQUIRE(split.size() == 61);
    for (int64_t step = 1; step <= 60; ++step) {
      INFO("step " << step);
      CHECK(split[step]["loss"].get<double>() == full[step]["loss"].get<double>());
    }
    CHECK(split[60]["val_loss"].get<double>() == full[60]["val_loss"].get<double>());
    // And the loss fell.
    CHECK(full[60]["loss"].get<double>() < full[1]["loss"].get<double>() - 0.05);
    // The sft trainer ran Sophia's curvature pass because the optimizer asked: steps 0, 10, ..., 50.
    if (name == "sophia")
      CHECK(load_safetensors(t / "full/latest.safetensors").tensors.at("optim.curvature_updates").item<int64_t>() == 6);
  }
}

TEST_CASE("every optimizer lowers the validation loss of a small char GPT on tiny Shakespeare", "[training][e2e]") {
  const std::string path = shared_data("tinyshakespeare.txt");
  if (path.empty()) LN_SKIP("tinyshakespeare.txt not found under " LINEARNEXUS_SHARED_DATA_DIR);
  for (const auto& [name, opt] : kOptimizers) {
    TempDir t;
    train_experiment(std::string(R"(
name: char-gpt-optimizers
data: {path: ")") + path +
                         R"(", seq_len: 32}
model: {hidden_size: 32, n_layer: 2, max_seq_len: 32, block_pattern: [attention], blocks: {attention: {n_head: 2}}}
schedule: {warmup_steps: 10}
trainer: {name: sft, max_steps: 150, batch_size: 8, log_every: 50, eval_every: 150, eval_batches: 4}
)",
                     with({"trainer.out_dir=" + (t / "run"), "optimizer.name=" + name}, opt));
    auto m = read_metrics(t / "run");
    const double val = m.rbegin()->second["val_loss"].get<double>();
    INFO(name << ": validation loss " << val << " after 150 steps (ln 65 = 4.17 at the start)");
    CHECK(val < kCharGPTTarget);
  }
}

TEST_CASE("a small char GPT learns tiny Shakespeare (val loss 0.5 nats under the unigram entropy)", "[training][e2e]") {
  const std::string path = shared_data("tinyshakespeare.txt");
  if (path.empty()) LN_SKIP("tinyshakespeare.txt not found under " LINEARNEXUS_SHARED_DATA_DIR);
  // The unigram entropy of the text's characters (3.31 nats for tiny Shakespeare).
  std::string text = read_text(path);
  std::map<char, double> counts;
  for (char c : text) counts[c] += 1;
  double H = 0;
  for (auto& [c, n] : counts) H -= n / text.size() * std::log(n / text.size());
  CHECK(H == Approx(3.31).margin(0.01));
  TempDir t;
  train_experiment(std::string(R"(
name: shakespeare-e2e
data: {path: ")") + path +
                       R"(", seq_len: 64}
model: {hidden_size: 96, n_layer: 2, max_seq_len: 64, block_pattern: [attention], blocks: {attention: {n_head: 4}}}
optimizer: {name: adamw, lr: 3e-3}
schedule: {warmup_steps: 20, min_lr: 3e-4}
trainer: {name: sft, max_steps: 300, batch_size: 16, log_every: 50, eval_every: 300, eval_batches: 10}
)",
                   {"trainer.out_dir=" + (t / "run")});
  auto m = read_metrics(t / "run");
  const double val = m.rbegin()->second["val_loss"].get<double>();
  INFO("validation loss " << val << " vs unigram entropy " << H);
  CHECK(val < H - 0.5);
}

// ---- the runner's errors: one clear line, a non-zero exit, nothing half-written ---------------

namespace {

const char* kCliExperiment = R"(name: cli
data: {path: "builtin:arithmetic", seq_len: 16}
model: {hidden_size: 16, n_layer: 1, max_seq_len: 32, block_pattern: [attention], blocks: {attention: {n_head: 2}}}
trainer: {name: sft, max_steps: 2, batch_size: 2, log_every: 1, eval_batches: 1}
sample: {num_samples: 0}
)";
}  // namespace

TEST_CASE("runner: malformed YAML, unknown key, wrong type, unknown plugin", "[cli]") {
  TempDir t;
  write_text(t / "broken.yaml", "model:\n  n_layer: [1,\n");
  check_one_clean_error(run_cli("validate " + (t / "broken.yaml")), "broken.yaml:3:");
  write_text(t / "typo.yaml", std::string(kCliExperiment) + "schedule: {warmpu_steps: 3}\n");
  check_one_clean_error(run_cli("validate " + (t / "typo.yaml")), "did you mean 'warmup_steps'");
  write_text(t / "exp.yaml", kCliExperiment);
  check_one_clean_error(run_cli("run " + (t / "exp.yaml") + " --set trainer.batch_size=two"), "must be an integer");
  check_one_clean_error(run_cli("run " + (t / "exp.yaml") + " --set 'model.block_pattern=[mambaa]'"),
                        "unknown block 'mambaa'");
}

TEST_CASE("runner: plugin folders with a non-plugin or a wrong-ABI plugin", "[cli]") {
  TempDir t;
  write_text(t / "exp.yaml", kCliExperiment);
  fs::create_directories(t / "junk");
  write_text(t / "junk/readme.so", "not a library");
  check_one_clean_error(run_cli("validate " + (t / "exp.yaml") + " --set 'plugins.paths=[" + (t / "junk") + "]'"),
                        "readme.so: not a loadable plugin");
  check_one_clean_error(run_cli("validate " + (t / "exp.yaml"), "LINEARNEXUS_PLUGIN_PATH=" LINEARNEXUS_TEST_PLUGIN_DIR),
                        "ABI version 999");
}

TEST_CASE("runner: missing data, data shorter than seq_len, mismatched and corrupt checkpoints", "[cli]") {
  TempDir t;
  write_text(t / "exp.yaml", kCliExperiment);
  check_one_clean_error(run_cli("run " + (t / "exp.yaml") + " --set data.path=" + (t / "missing.txt")),
                        "does not exist");
  write_text(t / "short.txt", "to be or not to be, that is the question");
  check_one_clean_error(
      run_cli("run " + (t / "exp.yaml") + " --set data.path=" + (t / "short.txt") + " --set data.seq_len=30"),
      "at least seq_len + 1");

  auto ok = run_cli("run " + (t / "exp.yaml") + " --set trainer.out_dir=" + (t / "a"));
  INFO(ok.err);
  REQUIRE(ok.code == 0);
  REQUIRE(fs::exists(t / "a/latest.safetensors"));
  REQUIRE(fs::exists(t / "a/config.yaml"));
  check_one_clean_error(run_cli("run " + (t / "exp.yaml") + " --set trainer.out_dir=" + (t / "b") +
                                " --set model.hidden_size=32 --set trainer.resume=" + (t / "a/latest.safetensors")),
                        "tensor 'model.wte.weight' is [");
  CHECK_FALSE(fs::exists(t / "b/latest.safetensors"));
  // A fresh run into a folder that holds checkpoints would overwrite them: refused.
  check_one_clean_error(run_cli("run " + (t / "exp.yaml") + " --set trainer.out_dir=" + (t / "a")),
                        "already holds checkpoints");

  std::string bytes = read_text(t / "a/latest.safetensors");
  write_text(t / "cut.safetensors", bytes.substr(0, bytes.size() - 100));
  check_one_clean_error(run_cli("sample --checkpoint " + (t / "cut.safetensors")), "cut.safetensors");

  auto sample = run_cli("sample --checkpoint " + (t / "a") + " --prompt '12+' --max-tokens 10");
  CHECK(sample.code == 0);
  CHECK(sample.out.rfind("---- sample 1 ----\n12+", 0) == 0);
}

TEST_CASE("runner: plugins lists broken files without failing, and a checkpoint records its plugins and checks them",
          "[cli]") {
  const std::string dir = LINEARNEXUS_TEST_PLUGIN_DIR;
  auto list = run_cli("plugins", "LINEARNEXUS_PLUGIN_PATH=" + dir + ":" + dir + "/good_v1");
  REQUIRE(list.code == 0);
  CHECK_CONTAINS(list.out, "good_identity 1.0.0  " + dir + "/good_v1/good_identity.so");
  CHECK_CONTAINS(list.out, "NOT LOADED " + dir + "/throws.so");
  CHECK_CONTAINS(list.out, "registered by both");

  TempDir t;
  write_text(t / "exp.yaml", kCliExperiment);
  const std::string v1 = "LINEARNEXUS_PLUGIN_PATH=" + dir + "/good_v1",
                    v2 = "LINEARNEXUS_PLUGIN_PATH=" + dir + "/good_v2";
  auto run = run_cli(
      "run " + (t / "exp.yaml") + " --set 'model.block_pattern=[test_identity]' --set trainer.out_dir=" + (t / "a"),
      v1);
  INFO(run.err);
  REQUIRE(run.code == 0);
  auto plugins = nlohmann::json::parse(read_safetensors_metadata(t / "a/latest.safetensors").at("plugins"));
  CHECK(plugins["block:test_identity"]["plugin"] == "good_identity");
  CHECK(plugins["block:test_identity"]["version"] == "1.0.0");
  // The plugin is missing: the error names it, its version and the folders searched.
  check_one_clean_error(
      run_cli("sample --checkpoint " + (t / "a") + " --max-tokens 2"),
      "needs block 'test_identity' from plugin 'good_identity' 1.0.0, which is not on the plugin path (");
  CHECK_CONTAINS(run_cli("sample --checkpoint " + (t / "a") + " --max-tokens 2").err, "lib/linearnexus/plugins");
  // Another version of it: a warning naming both versions, then it samples.
  auto other = run_cli("sample --checkpoint " + (t / "a") + " --max-tokens 2", v2);
  CHECK(other.code == 0);
  CHECK_CONTAINS(other.err,
                 "was made with plugin 'good_identity' 1.0.0, loading it with 2.0.0 from " + dir + "/good_v2");
  // Resuming training from it with the other version warns the same way.
  auto resumed = run_cli("run " + (t / "exp.yaml") +
                             " --set 'model.block_pattern=[test_identity]' --set trainer.out_dir=" + (t / "b") +
                             " --set trainer.max_steps=3 --set trainer.resume=" + (t / "a/latest.safetensors"),
                         v2);
  CHECK(resumed.code == 0);
  CHECK_CONTAINS(resumed.err, "was made with plugin 'good_identity' 1.0.0, loading it with 2.0.0");
  // The same version: no warning.
  auto same = run_cli("sample --checkpoint " + (t / "a") + " --max-tokens 2", v1);
  CHECK(same.code == 0);
  CHECK(same.err.find("was made with plugin") == std::string::npos);
}

TEST_CASE("runner: plugins lists files and versions and describe documents keys and docs/config.md is current",
          "[cli]") {
  auto list = run_cli("plugins");
  REQUIRE(list.code == 0);
  CHECK_CONTAINS(list.out, "attention 1.0.0");
  CHECK_CONTAINS(list.out, "attention.so");
  CHECK_CONTAINS(list.out, "[block attention]");
  CHECK_CONTAINS(list.out, "[optimizer adamw]");
  CHECK_CONTAINS(list.out, "[trainer sft]");
  auto describe = run_cli("plugins describe attention");
  REQUIRE(describe.code == 0);
  CHECK_CONTAINS(describe.out, "n_kv_head");
  CHECK_CONTAINS(describe.out, "MHA");
  check_one_clean_error(run_cli("plugins describe attentoin"), "attention");
  // docs/config.md is generated from the schemas; regenerate it when a key changes:
  //   build/bin/linearnexus docs > docs/config.md
  auto docs = run_cli("docs");
  REQUIRE(docs.code == 0);
  CHECK(docs.out == read_text(LINEARNEXUS_SOURCE_DIR "/docs/config.md"));
}

TEST_CASE("runner: every shipped config validates, and each block plugin's sample config trains and samples", "[cli]") {
  for (const auto& dir : {"configs", "plugins/attention", "plugins/mamba", "plugins/mla", "plugins/gla",
                          "plugins/mamba2", "plugins/deltanet", "plugins/rwkv7"}) {
    for (const auto& f : fs::directory_iterator(fs::path(LINEARNEXUS_SOURCE_DIR) / dir)) {
      if (f.path().extension() != ".yaml") continue;
      // finetune_hf / grpo_hf start from an imported model: test_hf_convert.cpp validates them with one.
      const std::string stem = f.path().stem().string();
      if (stem.size() > 3 && stem.compare(stem.size() - 3, 3, "_hf") == 0) continue;
      INFO(f.path().string());
      auto v = run_cli("validate " + f.path().string());
      // validate checks files' existence as run does (preflight.h): the configs of a later stage
      // name what an earlier one makes (the prepared BPE data, the SFT run) and say so.
      const std::map<std::string, std::string> needs = {
          {"gpt_shakespeare_bpe", "'runs/data/shakespeare_gpt2' does not exist"},
          {"grpo_arithmetic", "checkpoint 'runs/sft_arithmetic' does not exist"},
          {"ppo_arithmetic", "checkpoint 'runs/sft_arithmetic' does not exist"}};
      if (needs.count(stem) && v.code != 0) {
        check_one_clean_error(v, needs.at(stem));
        continue;
      }
      CHECK(v.code == 0);
      CHECK(v.err == "");
    }
  }
  TempDir t;
  for (const auto& block : {"attention", "mamba", "mla", "gla", "mamba2", "deltanet", "rwkv7"}) {
    INFO(block);
    const std::string yaml = std::string(LINEARNEXUS_SOURCE_DIR "/plugins/") + block + "/" + block + ".yaml";
    auto run = run_cli("run " + yaml + " --set trainer.max_steps=2 --set trainer.log_every=1 --set trainer.out_dir=" +
                       (t / block) + " --set sample.max_tokens=3");
    INFO(run.err);
    CHECK(run.code == 0);
    CHECK_CONTAINS(run.out, "---- sample 1 ----");
    CHECK(fs::exists(t / (std::string(block) + "/latest.safetensors")));
  }
}

TEST_CASE("runner: sample takes its defaults from the checkpoint's sample section, only options given override",
          "[cli]") {
  TempDir t;
  write_text(t / "exp.yaml", kCliExperiment);
  auto ok = run_cli("run " + (t / "exp.yaml") + " --no-sample --set trainer.out_dir=" + (t / "a") +
                    " --set 'sample.prompt=7+' --set sample.num_samples=2 --set sample.max_tokens=3");
  INFO(ok.err);
  REQUIRE(ok.code == 0);
  auto s = run_cli("sample --checkpoint " + (t / "a"));
  REQUIRE(s.code == 0);
  CHECK(s.out.rfind("---- sample 1 ----\n7+", 0) == 0);  // the checkpoint's prompt
  CHECK_CONTAINS(s.out, "---- sample 2 ----");           // and its num_samples
  auto one = run_cli("sample --checkpoint " + (t / "a") + " --num-samples 1 --prompt '12+'");
  REQUIRE(one.code == 0);
  CHECK(one.out.rfind("---- sample 1 ----\n12+", 0) == 0);
  CHECK(one.out.find("---- sample 2 ----") == std::string::npos);
  check_one_clean_error(run_cli("sample --checkpoint " + (t / "a") + " --max-tokens abc"),
                        "--max-tokens");  // typed: CLI11 refuses a non-number
}

TEST_CASE("runner: plugins describe of a mistyped name suggests the nearest name of any kind", "[cli]") {
  auto r = run_cli("plugins describe adamx");
  check_one_clean_error(r, "did you mean 'adamw'?");
  CHECK_CONTAINS(r.err, "optimizers: adamw");
  CHECK_CONTAINS(r.err, "trainers: dpo, grpo");
}

TEST_CASE("trainer keys belong to the trainer that reads them: grpo refuses sft's batch_size", "[config]") {
  PluginHost host;
  auto err = error_of([&] {
    parse(std::string(kCliExperiment) + "", host, {"trainer.name=grpo", "trainer.batch_size=8"});
  });
  CHECK_CONTAINS(err, "unknown key 'batch_size' in 'trainer'");
  Experiment sft = parse(kCliExperiment, host, {"trainer.batch_size=8"});
  CHECK(sft.trainer_params.get_int("batch_size") == 8);
  CHECK_CONTAINS(error_of([&] { parse(kCliExperiment, host, {"trainer.batch_size=0"}); }),
                 "'trainer.batch_size' must be >= 1");
}
