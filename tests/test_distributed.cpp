// Data-parallel training on c10d with Gloo: 2 processes on localhost (the default CPU run).
// W ranks x batch b train exactly as one process x batch W b (same data, mean gradients); a
// checkpoint resumes on another number of ranks; a dead or hung rank ends the others with one
// error; bad launches are one error line.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <cmath>

#include "catch.h"
#include "linearnexus/host/distributed.h"
#include "test_util.h"

using namespace linearnexus;
using namespace lntest;
namespace fs = std::filesystem;

namespace {
const char* kExperiment = R"(name: ddp
data: {path: "builtin:arithmetic", seq_len: 32}
model: {hidden_size: 32, n_layer: 2, max_seq_len: 64, block_pattern: [attention], blocks: {attention: {n_head: 2}}}
trainer: {name: sft, max_steps: 20, batch_size: 4, log_every: 1, eval_every: 10, eval_batches: 2, save_every: 10}
sample: {num_samples: 0}
)";

// A localhost port nobody listens on (bound, read, released).
int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

void check_same_losses(const std::string& a, const std::string& b, int64_t steps) {
  auto ma = read_metrics(a), mb = read_metrics(b);
  for (int64_t s = 1; s <= steps; ++s) {
    INFO("step " << s);
    REQUIRE(ma.count(s));
    REQUIRE(mb.count(s));
    CHECK(ma[s]["loss"].get<double>() == Approx(mb[s]["loss"].get<double>()).epsilon(1e-4));
    CHECK(ma[s]["grad_norm"].get<double>() == Approx(mb[s]["grad_norm"].get<double>()).epsilon(1e-3));
    if (ma[s].contains("val_loss"))
      CHECK(ma[s]["val_loss"].get<double>() == Approx(mb[s]["val_loss"].get<double>()).epsilon(1e-4));
  }
}
}  // namespace

TEST_CASE(
    "2 ranks x batch b log the losses of 1 rank x batch 2b (GPT, Mamba, Muon, grad accumulation, activation checkpointing)",
    "[distributed]") {
  TempDir t;
  write_text(t / "exp.yaml", kExperiment);
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"gpt", ""},
      {"mamba", " --set 'model.block_pattern=[mamba]'"},
      {"muon", " --optimizer muon"},
      {"accum", " --set trainer.grad_accum=2 --set data.sampling=epoch"},
      {"checkpointing", " --set trainer.activation_checkpointing=blocks"},  // the hooks see the recomputed grads
  };
  for (const auto& [name, extra] : cases) {
    INFO(name);
    auto two = run_cli("run " + (t / "exp.yaml") + " --nproc 2 --set trainer.out_dir=" + (t / (name + "2")) + extra);
    INFO(two.err);
    REQUIRE(two.code == 0);
    auto one = run_cli("run " + (t / "exp.yaml") +
                       " --set trainer.batch_size=8 --set trainer.out_dir=" + (t / (name + "1")) + extra);
    REQUIRE(one.code == 0);
    check_same_losses(t / (name + "2"), t / (name + "1"), 20);
    // Rank 0 alone wrote the folder: one progress log, one metrics line per step (and step 0's).
    CHECK(read_metrics(t / (name + "2")).size() == 21);
    CHECK_CONTAINS(two.err, "distributed: rank 0 of 2 (gloo, cpu)");
  }
  // Sophia's curvature pass is averaged too: it trains (its sampled labels differ per rank, so no
  // equality with one process).
  auto sophia =
      run_cli("run " + (t / "exp.yaml") + " --nproc 2 --optimizer sophia --set trainer.out_dir=" + (t / "sophia"));
  INFO(sophia.err);
  CHECK(sophia.code == 0);
  CHECK(std::isfinite(read_metrics(t / "sophia")[20]["loss"].get<double>()));
}

TEST_CASE("a checkpoint written by 2 ranks resumes on 1 (same global batch: the same run)", "[distributed]") {
  TempDir t;
  write_text(t / "exp.yaml", kExperiment);
  REQUIRE(run_cli("run " + (t / "exp.yaml") + " --nproc 2 --set trainer.out_dir=" + (t / "full")).code == 0);
  REQUIRE(run_cli("run " + (t / "exp.yaml") +
                  " --nproc 2 --set trainer.stop_after=10 --set trainer.out_dir=" + (t / "split"))
              .code == 0);
  auto resumed =
      run_cli("run " + (t / "exp.yaml") +
              " --set trainer.batch_size=8 --set trainer.resume=auto --set trainer.out_dir=" + (t / "split"));
  INFO(resumed.err);
  REQUIRE(resumed.code == 0);
  CHECK_CONTAINS(resumed.err, "at step 10");
  check_same_losses(t / "full", t / "split", 20);
}

TEST_CASE("a rank that dies or hangs ends the others with one clear error", "[distributed]") {
  TempDir t;
  write_text(t / "exp.yaml", kExperiment);
  for (const std::string signal : {"KILL", "STOP"}) {
    INFO(signal);
    const std::string env = "WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=" + std::to_string(free_port());
    const std::string run =
        std::string(LINEARNEXUS_RUNNER) + " run " + (t / "exp.yaml") +
        " --set trainer.max_steps=1000000 --set trainer.save_every=0 --set distributed.timeout_sec=4" +
        " --set trainer.out_dir=" + (t / ("run" + signal));
    const std::string script = "(RANK=0 " + env + " " + run + " >/dev/null 2>" + (t / "err0") + "; echo $? >" +
                               (t / "rc0") + ") & RANK=1 " + env + " " + run +
                               " >/dev/null 2>&1 & r1=$!; sleep 3; kill -" + signal +
                               " $r1; wait %1; kill -KILL $r1 2>/dev/null; wait";
    REQUIRE(std::system(("bash -c '" + script + "'").c_str()) == 0);
    CliResult r{std::stoi(read_text(t / "rc0")), "", read_text(t / "err0")};
    check_one_clean_error(r, "error: distributed: ");
    CHECK_CONTAINS(r.err, "another rank died or stopped answering");
  }
}

TEST_CASE("bad launches are one error line", "[distributed][cli]") {
  TempDir t;
  write_text(t / "exp.yaml", kExperiment);
  const std::string run = "run " + (t / "exp.yaml") + " --set trainer.out_dir=" + (t / "r");
  check_one_clean_error(run_cli(run, "WORLD_SIZE=2 RANK=0"), "MASTER_ADDR is not");
  check_one_clean_error(run_cli(run, "WORLD_SIZE=2 RANK=5 MASTER_ADDR=127.0.0.1 MASTER_PORT=1234"),
                        "needs RANK in 0..1");
  check_one_clean_error(run_cli(run, "WORLD_SIZE=two"), "WORLD_SIZE='two' is not an integer");
  check_one_clean_error(run_cli(run + " --nproc 2", "WORLD_SIZE=2"), "WORLD_SIZE is already set");
  check_one_clean_error(run_cli(run + " --nproc 0"), "--nproc");
  check_one_clean_error(run_cli(run + " --nproc 2 --set device=cuda"), "cuda");
  // A taken port: rank 0 cannot serve the rendezvous there.
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  ::listen(fd, 1);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  check_one_clean_error(
      run_cli(run + " --set distributed.timeout_sec=3",
              "WORLD_SIZE=2 RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT=" + std::to_string(ntohs(a.sin_port))),
      "could not meet the others");
  ::close(fd);
}

TEST_CASE("grpo and ppo on 2 ranks split the prompts and train", "[distributed][rl]") {
  TempDir t;
  const std::string configs = LINEARNEXUS_SOURCE_DIR "/configs/";
  const std::string small = " --set model.hidden_size=32 --set model.n_layer=1";
  REQUIRE(run_cli("run " + configs +
                  "sft_arithmetic.yaml --no-sample --set trainer.max_steps=20 --set trainer.eval_batches=1" + small +
                  " --set trainer.out_dir=" + (t / "sft"))
              .code == 0);
  for (const std::string trainer : {"grpo", "ppo"}) {
    INFO(trainer);
    auto r = run_cli("run " + configs + trainer + "_arithmetic.yaml --no-sample --nproc 2 --set trainer.max_steps=2" +
                     small + " --set trainer.prompts_per_step=2 --set task.eval_size=8 --set trainer.init_from=" +
                     (t / "sft") + " --set trainer.out_dir=" + (t / trainer));
    INFO(r.err);
    REQUIRE(r.code == 0);
    auto m = read_metrics(t / trainer);
    REQUIRE(m.count(2));
    CHECK(std::isfinite(m[2]["reward_mean"].get<double>()));
  }
}
