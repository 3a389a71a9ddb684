// Reliability: no bad input, crash or full disk loses data, hangs or ends without one clear error.
// Divergence, two runs on one folder, metrics under a full disk, resume past a corrupt `latest`,
// `data prepare` over existing folders, `validate` refusing what `run` refuses, YAML that would be
// silently misread, the sampler's CLI, and kill -9 during training.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <chrono>
#include <cmath>
#include <thread>

#include "catch.h"
#include "linearnexus/host/run_checkpoint.h"
#include "linearnexus/host/session.h"
#include "test_util.h"

using namespace linearnexus;
using namespace lntest;
namespace fs = std::filesystem;

namespace {
const char* kExperiment = R"(name: rel
data: {path: "builtin:arithmetic", seq_len: 16}
model: {hidden_size: 16, n_layer: 1, max_seq_len: 32, block_pattern: [attention], blocks: {attention: {n_head: 2}}}
trainer: {name: sft, max_steps: 4, batch_size: 2, log_every: 1, eval_batches: 1, save_every: 2}
sample: {num_samples: 0}
)";

// Every line of a run's metrics.jsonl is one JSON object (no torn or garbled line).
void check_metrics_lines(const std::string& run_dir) {
  std::ifstream in(run_dir + "/metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    INFO(line);
    CHECK_NOTHROW(nlohmann::json::parse(line));
  }
}
}  // namespace

TEST_CASE("divergence stops the run with one error naming the step and the last good checkpoint",
          "[reliability][cli]") {
  TempDir t;
  write_text(t / "exp.yaml", kExperiment);
  // Two good steps saved, then an lr that blows the weights up.
  auto good = run_cli("run " + (t / "exp.yaml") + " --set trainer.out_dir=" + (t / "a") + " --set trainer.max_steps=2");
  REQUIRE(good.code == 0);
  auto r = run_cli(
      "run " + (t / "exp.yaml") + " --set trainer.out_dir=" + (t / "a") +
      " --set trainer.resume=auto --set trainer.max_steps=40 --set optimizer.lr=1e12 --set trainer.grad_clip=0");
  check_one_clean_error(r, "training diverged at step");
  CHECK_CONTAINS(r.err, "The last good checkpoint is " + (t / "a/latest.safetensors"));
  // Nothing non-finite was saved, and rotation kept the good checkpoint.
  for (const auto& f : fs::directory_iterator(t / "a")) {
    if (f.path().extension() != ".safetensors") continue;
    INFO(f.path().string());
    for (const auto& [k, v] : load_safetensors(f.path().string()).tensors)
      if (k.rfind("model.", 0) == 0) CHECK(at::isfinite(v).all().item<bool>());
  }
  check_metrics_lines(t / "a");
}

TEST_CASE("a second run on a folder in use is refused, naming the folder and the holder's pid", "[reliability][cli]") {
  TempDir t;
  write_text(t / "exp.yaml", kExperiment);
  fs::create_directories(t / "a");
  {
    auto lock = lock_run_folder(t / "a");
    auto r = run_cli("run " + (t / "exp.yaml") + " --set trainer.out_dir=" + (t / "a"));
    check_one_clean_error(r, "is in use by another run (pid " + std::to_string(::getpid()) + ")");
    CHECK_FALSE(fs::exists(t / "a/config.yaml"));
  }
  // Released: the run goes ahead.
  CHECK(run_cli("run " + (t / "exp.yaml") + " --set trainer.out_dir=" + (t / "a")).code == 0);
}

TEST_CASE("a full disk while training ends with an error, never with lost or torn metric lines", "[reliability][cli]") {
  TempDir t;
  write_text(t / "exp.yaml", kExperiment);
  // RLIMIT_FSIZE as a full disk: writes past 40 KB fail (SIGXFSZ ignored, so they fail with EFBIG).
  auto r = run_cli("run " + (t / "exp.yaml") + " --set trainer.out_dir=" + (t / "a") +
                       " --set trainer.max_steps=400 --set trainer.save_every=0",
                   "trap '' XFSZ; ulimit -f 40;");
  check_one_clean_error(r, "disk full?");
  check_metrics_lines(t / "a");
}

TEST_CASE("resume: auto past a corrupt latest falls back to the newest step file that loads", "[reliability][cli]") {
  TempDir t;
  write_text(t / "exp.yaml", kExperiment);
  REQUIRE(run_cli("run " + (t / "exp.yaml") + " --set trainer.out_dir=" + (t / "a")).code == 0);
  REQUIRE(fs::exists(t / "a/step_00000002.safetensors"));
  // latest is a hard link to step 4: truncating it corrupts both names.
  fs::resize_file(t / "a/latest.safetensors", fs::file_size(t / "a/latest.safetensors") / 2);
  auto r = run_cli("run " + (t / "exp.yaml") + " --set trainer.out_dir=" + (t / "a") +
                   " --set trainer.resume=auto --set trainer.max_steps=6");
  INFO(r.err);
  REQUIRE(r.code == 0);
  CHECK_CONTAINS(r.err, "resuming from " + (t / "a/step_00000002.safetensors"));
  CHECK_CONTAINS(r.err, "resumed from " + (t / "a/step_00000002.safetensors") + " at step 2");
  CHECK(read_metrics(t / "a").count(6));
  // None loads: one error, not a fresh start over the folder.
  for (const auto& f : fs::directory_iterator(t / "a"))
    if (f.path().extension() == ".safetensors") fs::resize_file(f.path(), 10);
  check_one_clean_error(run_cli("run " + (t / "exp.yaml") + " --set trainer.out_dir=" + (t / "a") +
                                " --set trainer.resume=auto --set trainer.max_steps=8"),
                        "none of them loads");
}

TEST_CASE("data prepare refuses a folder that is not empty unless --force", "[reliability][cli]") {
  TempDir t;
  write_text(t / "x.txt", "abcdefghij0123456789abcdefghij");
  const std::string prep = "data prepare --tokenizer char --no-progress --val-fraction 0.2 --input " + (t / "x.txt");
  REQUIRE(run_cli(prep + " --out " + (t / "p")).code == 0);
  const std::string meta = read_text(t / "p/meta.json");
  check_one_clean_error(run_cli(prep + " --out " + (t / "p")), "already holds a prepared dataset");
  CHECK(read_text(t / "p/meta.json") == meta);
  write_text(t / "exp.yaml", kExperiment);
  REQUIRE(run_cli("run " + (t / "exp.yaml") + " --set trainer.out_dir=" + (t / "run")).code == 0);
  check_one_clean_error(run_cli(prep + " --out " + (t / "run")), "already holds a training run");
  CHECK(run_cli(prep + " --out " + (t / "p") + " --force").code == 0);
}

TEST_CASE("validate refuses what run refuses: ranges, non-finite numbers, trainer checks", "[reliability][cli]") {
  TempDir t;
  write_text(t / "exp.yaml", kExperiment);
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"model.n_layer=0", "'model.n_layer' must be >= 1"},
      {"model.n_layer=-1", "'model.n_layer' must be >= 1"},
      {"data.seq_len=0", "'data.seq_len' must be >= 1"},
      {"data.seq_len=64", "longer than model.max_seq_len"},
      {"model.blocks.attention.n_head=0", "'model.blocks.attention.n_head' must be >= 1"},
      {"data.val_fraction=1.5", "'data.val_fraction' must be in [0.0001, 0.9]"},
      {"model.dropout=2", "'model.dropout' must be in [0, 1]"},
      {"optimizer.lr=.nan", "must be a finite number"},
      {"schedule.min_lr=.inf", "must be a finite number"},
      {"trainer.batch_size=0", "'trainer.batch_size' must be >= 1"},
      {"trainer.eval_batches=0", "'trainer.eval_batches' must be >= 1"},
      {"trainer.max_steps=-1", "'trainer.max_steps' must be >= 1"},
      {"device=tpu", "device' must be one of: auto, cpu, cuda (got 'tpu')"},
  };
  for (const auto& [set, expect] : bad) {
    INFO(set);
    check_one_clean_error(run_cli("validate " + (t / "exp.yaml") + " --set " + set), expect);
    check_one_clean_error(run_cli("run " + (t / "exp.yaml") + " --set trainer.out_dir=" + (t / "r") + " --set " + set),
                          expect);
  }
  CHECK_FALSE(fs::exists(t / "r/latest.safetensors"));
}

TEST_CASE("YAML that would be misread is refused: duplicate keys, a second document, model errors point at their line",
          "[reliability][config]") {
  TempDir t;
  write_text(t / "dup.yaml", std::string(kExperiment) + "seed: 1\nseed: 2\n");
  check_one_clean_error(run_cli("validate " + (t / "dup.yaml")),
                        "dup.yaml:7:1: key 'seed' appears twice in the same map (first at ");
  write_text(t / "nested.yaml", "trainer: {max_steps: 3, max_steps: 4}\n");
  check_one_clean_error(run_cli("validate " + (t / "nested.yaml")), "key 'max_steps' appears twice");
  write_text(t / "two.yaml", std::string(kExperiment) + "---\nname: other\n");
  check_one_clean_error(run_cli("validate " + (t / "two.yaml")), "a second YAML document");
  write_text(t / "model.yaml",
             "data: {path: \"builtin:arithmetic\", seq_len: 16}\nmodel:\n  hidden_size: 16\n  n_layer: two\n");
  check_one_clean_error(run_cli("validate " + (t / "model.yaml")),
                        "model.yaml:4:12: 'model.n_layer' must be an integer");
}

TEST_CASE("sample: every bad option is one error line with exit 1, top-p 0 keeps the most likely token",
          "[reliability][cli]") {
  TempDir t;
  write_text(t / "exp.yaml", kExperiment);
  REQUIRE(run_cli("run " + (t / "exp.yaml") + " --set trainer.out_dir=" + (t / "a")).code == 0);
  const std::string s = "sample --checkpoint " + (t / "a");
  for (const auto& [args, expect] : std::vector<std::pair<std::string, std::string>>{
           {" --max-tokens 0", "'sample.max_tokens' must be >= 1"},
           {" --max-tokens abc", "--max-tokens"},  // typed: CLI11 refuses what is not a number
           {" --max-tokens -3", "'sample.max_tokens' must be >= 1"},
           {" --num-samples -1", "'sample.num_samples' must be >= 0"},
           {" --top-p 1.5", "'sample.top_p' must be in [0, 1]"},
           {" --device tpu", "device must be cpu, cuda or auto"},
           {" --seed", "--seed"},
           {" --bogus", "bogus"}}) {
    INFO(args);
    auto r = run_cli(s + args);
    check_one_clean_error(r, expect);
    CHECK(r.code == 1);
  }
  auto greedy = run_cli(s + " --prompt '1+' --max-tokens 5 --temperature 0");
  auto top0 = run_cli(s + " --prompt '1+' --max-tokens 5 --top-p 0 --seed 3");
  REQUIRE(greedy.code == 0);
  REQUIRE(top0.code == 0);
  CHECK(top0.out == greedy.out);
}

TEST_CASE("kill -9 during training, saves included, never leaves a run that cannot resume", "[reliability][cli]") {
  TempDir t;
  write_text(t / "exp.yaml", kExperiment);
  const std::string cmd = std::string(LINEARNEXUS_RUNNER) + " run " + (t / "exp.yaml") +
                          " --set trainer.out_dir=" + (t / "a") +
                          " --set trainer.resume=auto --set trainer.max_steps=100000 --set trainer.save_every=3" +
                          " --set trainer.log_every=1 > /dev/null 2>&1";
  for (int kill = 0; kill < 4; ++kill) {
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      ::execl("/bin/sh", "sh", "-c", ("exec " + cmd).c_str(), static_cast<char*>(nullptr));
      ::_exit(127);
    }
    // Long enough to start, train and save a few times; the kill lands at an arbitrary point.
    std::this_thread::sleep_for(std::chrono::milliseconds(1500 + 350 * kill));
    ::kill(pid, SIGKILL);
    int status = 0;
    ::waitpid(pid, &status, 0);
  }
  // Whatever was interrupted: a loadable latest and a resume that finishes with whole metric lines
  // (a line torn by the kill is dropped by the resume, with every line past the checkpoint).
  REQUIRE(fs::exists(t / "a/latest.safetensors"));
  CHECK_NOTHROW(load_safetensors(t / "a/latest.safetensors"));
  const int64_t step = std::stoll(read_safetensors_metadata(t / "a/latest.safetensors").at("step"));
  auto r = run_cli("run " + (t / "exp.yaml") + " --set trainer.out_dir=" + (t / "a") + " --set trainer.resume=auto" +
                   " --set trainer.max_steps=" + std::to_string(step + 2));
  INFO(r.err);
  CHECK(r.code == 0);
  check_metrics_lines(t / "a");
  CHECK(read_metrics(t / "a").count(step + 2));
}

// Checkpoints written before the SDK / host split (tests/fixtures/old_runs: commit 829378e, plugin
// ABI 3) still load, and a run resumed from one logs what the old build logged uninterrupted: SFT
// (model, AdamW state, RNG) and PPO (its value function under extra.value.*, extra.value_optim.*).
TEST_CASE("checkpoints written before the SDK split resume and log what the old build logged",
          "[reliability][checkpoint]") {
  const std::string dir = LINEARNEXUS_SOURCE_DIR "/tests/fixtures/old_runs";
  const nlohmann::json expected = nlohmann::json::parse(read_text(dir + "/expected.json"));
  const std::vector<std::string> small{"model.hidden_size=16", "model.n_layer=1", "model.blocks.attention.n_head=2",
                                       "task.eval_size=10"};
  auto config = [](const std::string& name) { return read_text(LINEARNEXUS_SOURCE_DIR "/configs/" + name); };
  TempDir t;
  {
    std::vector<std::string> o = small;
    for (const char* s : {"trainer.log_every=1", "trainer.eval_batches=1", "trainer.batch_size=4",
                          "trainer.max_steps=20", "trainer.save_every=10", "trainer.eval_every=0"})
      o.push_back(s);
    o.push_back("trainer.resume=" + dir + "/sft_step10.safetensors");
    o.push_back("trainer.out_dir=" + (t / "sft"));
    train_experiment(config("sft_arithmetic.yaml"), o);
    auto m = read_metrics(t / "sft");
    for (int64_t step = 11; step <= 20; ++step) {
      INFO("sft step " << step);
      REQUIRE(m.count(step));
      CHECK(m[step]["loss"].get<double>() ==
            Approx(expected["sft_loss"][std::to_string(step)].get<double>()).epsilon(1e-6));
    }
  }
  {
    std::vector<std::string> o = small;
    for (const char* s : {"trainer.log_every=1", "trainer.max_steps=4", "trainer.prompts_per_step=2",
                          "trainer.group_size=2", "trainer.minibatches=2", "trainer.save_every=2",
                          "trainer.value_model=separate", "trainer.eval_every=0", "optimizer.lr=0.01"})
      o.push_back(s);
    o.push_back("trainer.init_from=" + dir + "/sft_step10.safetensors");
    o.push_back("trainer.resume=" + dir + "/ppo_step2.safetensors");
    o.push_back("trainer.out_dir=" + (t / "ppo"));
    train_experiment(config("ppo_arithmetic.yaml"), o);
    auto m = read_metrics(t / "ppo");
    for (int64_t step = 3; step <= 4; ++step) {
      INFO("ppo step " << step);
      REQUIRE(m.count(step));
      for (const char* k : {"entropy", "response_len", "kl", "reward_mean"})
        CHECK(m[step][k].get<double>() == Approx(expected["ppo"][std::to_string(step)][k].get<double>()).epsilon(1e-6));
    }
    // The value function came back from extra.value.* (a trainable group of the run) and is saved there again.
    CHECK(load_safetensors(t / "ppo/latest.safetensors").tensors.count("extra.value.trunk.wte.weight") == 1);
  }
}
