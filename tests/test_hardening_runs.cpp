// Hardening, round two (issue #33), runs: ranks started with different experiments (1), a
// rendezvous with something that is not a c10d store (3), --nproc past the machine (5), stop
// signals (7), edited optimizer state (8), `validate` refusing what `run` refuses (10), and messages
// that name what is wrong (12). Each test makes its bad input (config, signal, file) itself.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <thread>

#include "catch.h"
#include "linearnexus/host/data.h"
#include "linearnexus/host/run_checkpoint.h"
#include "linearnexus/host/runtime.h"
#include "linearnexus/host/session.h"
#include "test_util.h"

using namespace linearnexus;
using namespace lntest;
using nlohmann::json;
using namespace std::chrono_literals;

namespace {

const char* kExp = R"(name: runs
data: {path: "builtin:arithmetic", seq_len: 16}
model: {hidden_size: 32, n_layer: 1, max_seq_len: 32, block_pattern: [attention], blocks: {attention: {n_head: 2}}}
optimizer: {lr: 0.002}
trainer: {name: sft, max_steps: 2, batch_size: 2, log_every: 1, eval_batches: 1}
sample: {num_samples: 0}
)";
const std::string kTimeout = "timeout 120";

// A localhost port: free (bound, read, released), or held open by `listen_fd` (listening, never
// accepting: what a program that is not a c10d store looks like to a client).
int local_port(int* listen_fd = nullptr) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  if (listen_fd) {
    ::listen(fd, 16);
    *listen_fd = fd;
  } else {
    ::close(fd);
  }
  return ntohs(a.sin_port);
}

// A command in the background, its stderr to `err`.
pid_t start(const std::string& cmd, const std::string& err) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::execl("/bin/sh", "sh", "-c", ("exec " + cmd + " >/dev/null 2>" + err).c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  return pid;
}
bool wait_for_text(const std::string& file, const std::string& text, std::chrono::seconds limit) {
  const auto end = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < end) {
    if (read_text(file).find(text) != std::string::npos) return true;
    std::this_thread::sleep_for(50ms);
  }
  return false;
}
// The exit code (128 + signal when killed by one); -1 after `limit` (then the process is killed).
int wait_exit(pid_t pid, std::chrono::seconds limit) {
  const auto end = std::chrono::steady_clock::now() + limit;
  int status = 0;
  while (std::chrono::steady_clock::now() < end) {
    if (::waitpid(pid, &status, WNOHANG) == pid)
      return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    std::this_thread::sleep_for(50ms);
  }
  ::kill(pid, SIGKILL);
  ::waitpid(pid, &status, 0);
  return -1;
}
int64_t step_of(const std::string& checkpoint) { return std::stoll(read_safetensors_metadata(checkpoint).at("step")); }

template <class F>
void edit_checkpoint(const std::string& in, const std::string& out, F&& edit) {
  auto ck = load_safetensors(in);
  edit(ck.tensors, ck.metadata);
  save_safetensors(out, ck.tensors, ck.metadata);
}

}  // namespace

TEST_CASE("ranks started with different experiments refuse together, naming the first key that differs",
          "[hardening2][distributed]") {
  TempDir t;
  write_text(t / "exp.yaml", kExp);
  const auto pair = [&](const std::string& rank1_extra) {
    const std::string env = "WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=" + std::to_string(local_port());
    const std::string run = kTimeout + " " + LINEARNEXUS_RUNNER + " run " + (t / "exp.yaml") +
                            " --set trainer.out_dir=" + (t / "m") + " --set distributed.timeout_sec=30";
    const std::string script = "(RANK=0 " + env + " " + run + " >/dev/null 2>" + (t / "err0") + "; echo $? >" +
                               (t / "rc0") + ") & (RANK=1 " + env + " " + run + rank1_extra + " >/dev/null 2>" +
                               (t / "err1") + "; echo $? >" + (t / "rc1") + ") & wait";
    REQUIRE(std::system(("bash -c '" + script + "'").c_str()) == 0);
    return std::vector<CliResult>{{std::stoi(read_text(t / "rc0")), "", read_text(t / "err0")},
                                  {std::stoi(read_text(t / "rc1")), "", read_text(t / "err1")}};
  };
  // Another width: it used to end both ranks inside Gloo (terminate called ... EnforceNotMet, exit 134).
  for (const auto& r : pair(" --set model.hidden_size=48"))
    check_one_clean_error(
        r,
        "distributed: rank 1 was started with another experiment than rank 0: model.hidden_size is 48 on "
        "rank 1 but 32 on rank 0");
  // Only another learning rate: it used to train silently.
  for (const auto& r : pair(" --set optimizer.lr=0.5"))
    check_one_clean_error(r, "optimizer.lr is 0.5 on rank 1 but 0.002 on rank 0");
  CHECK_FALSE(fs::exists(t / "m/latest.safetensors"));
  // The data and the start checkpoint are part of what ranks compare, by content (paths differ
  // between machines): the same text gives the same entries, another one of the same size does not.
  PluginHost host;
  Experiment e = parse(kExp, host);
  DataSettings d = e.data;
  std::string ab, ba;
  for (int i = 0; i < 1500; ++i) ab += "ab", ba += "ba";
  write_text(t / "a.txt", ab);  // the same size and vocabulary, other tokens
  write_text(t / "b.txt", ba);
  d.path = t / "a.txt";
  const auto a = run_identity(e, load_data(d, ""), nullptr);
  CHECK(a == run_identity(e, load_data(d, ""), nullptr));
  d.path = t / "b.txt";
  const auto b = run_identity(e, load_data(d, ""), nullptr);
  REQUIRE(a.size() == b.size());
  CHECK(a != b);
  for (size_t i = 0; i < a.size(); ++i)
    if (a[i] != b[i]) CHECK((a[i].first == "data (train split)" || a[i].first == "data (validation split)"));
}

TEST_CASE("a rendezvous with a program that is not a c10d store ends within distributed.timeout_sec",
          "[hardening2][distributed]") {
  TempDir t;
  write_text(t / "exp.yaml", kExp);
  int fd = -1;
  const int port = local_port(&fd);  // listens, never answers
  const auto t0 = std::chrono::steady_clock::now();
  auto r =
      run_cli("run " + (t / "exp.yaml") + " --set trainer.out_dir=" + (t / "r") + " --set distributed.timeout_sec=2",
              kTimeout + " env WORLD_SIZE=2 RANK=1 MASTER_ADDR=127.0.0.1 MASTER_PORT=" + std::to_string(port));
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ::close(fd);
  check_one_clean_error(r, "distributed: rank 1 could not meet the others at 127.0.0.1:" + std::to_string(port));
  CHECK_CONTAINS(r.err, "a port nothing else listens on");
  CHECK(seconds < 60);
  // Nobody there at all: the address and what to check, and no LibTorch log lines (glog's "WARNING:
  // Logging before InitGoogleLogging()", c10d's "[c10d] The client socket has timed out") before it.
  const int free = local_port();
  auto none =
      run_cli("run " + (t / "exp.yaml") + " --set trainer.out_dir=" + (t / "r") + " --set distributed.timeout_sec=2",
              kTimeout + " env WORLD_SIZE=2 RANK=1 MASTER_ADDR=127.0.0.1 MASTER_PORT=" + std::to_string(free));
  check_one_clean_error(none, "could not meet the others at 127.0.0.1:" + std::to_string(free));
  CHECK(none.err.rfind("error: ", 0) == 0);  // the one line is the only line
}

TEST_CASE("run --nproc is bounded by the machine's cores (or --nproc-max) before any rank starts",
          "[hardening2][distributed]") {
  TempDir t;
  write_text(t / "exp.yaml", kExp);
  const auto t0 = std::chrono::steady_clock::now();
  check_one_clean_error(
      run_cli("run " + (t / "exp.yaml") + " --nproc 1000 --set trainer.out_dir=" + (t / "r"), kTimeout),
      "run --nproc 1000: this process may use");
  CHECK(std::chrono::steady_clock::now() - t0 < 30s);
  check_one_clean_error(
      run_cli("run " + (t / "exp.yaml") + " --nproc 3 --nproc-max 2 --set trainer.out_dir=" + (t / "r"), kTimeout),
      "more than --nproc-max 2");
  CHECK_FALSE(fs::exists(t / "r"));
}

TEST_CASE("SIGTERM / SIGINT finish the step, save and say so, a second signal aborts, --nproc forwards and waits",
          "[hardening2][signals]") {
  TempDir t;
  write_text(t / "exp.yaml", kExp);
  const auto long_run = [&](const std::string& dir, const std::string& extra = "") {
    return std::string(LINEARNEXUS_RUNNER) + " run " + (t / "exp.yaml") + " --set trainer.out_dir=" + dir +
           " --set trainer.max_steps=1000000 --set trainer.save_every=0 --set trainer.resume=auto" + extra;
  };
  SECTION("one signal: the step finishes, a checkpoint is saved, the error says so; the run resumes") {
    const pid_t pid = start(long_run(t / "a"), t / "err");
    REQUIRE(wait_for_text(t / "err", "step 5/", 90s));
    ::kill(pid, SIGTERM);
    CliResult r{wait_exit(pid, 90s), "", read_text(t / "err")};
    check_one_clean_error(r, "stopped by SIGTERM after step ");
    CHECK_CONTAINS(r.err, "continue with trainer.resume: auto");
    const int64_t step = step_of(t / "a/latest.safetensors");
    CHECK_CONTAINS(r.err, "after step " + std::to_string(step) + " of 1000000; saved " + (t / "a/latest.safetensors"));
    CHECK(read_metrics(t / "a").rbegin()->first == step);  // whole lines, up to the saved step
    auto resumed = run_cli("run " + (t / "exp.yaml") + " --set trainer.out_dir=" + (t / "a") +
                           " --set trainer.resume=auto --set trainer.max_steps=" + std::to_string(step + 2));
    INFO(resumed.err);
    CHECK(resumed.code == 0);
    CHECK_CONTAINS(resumed.err, "at step " + std::to_string(step));
  }
  SECTION("a second signal ends the process at once, leaving the last checkpoint intact") {
    const pid_t pid = start(long_run(t / "b", " --set trainer.save_every=3"), t / "err");
    REQUIRE(wait_for_text(t / "err", "step 7/", 90s));
    ::kill(pid, SIGTERM);
    ::kill(pid, SIGINT);  // another signal number: both are delivered, the second to a stopping run
    const int code = wait_exit(pid, 90s);
    CHECK((code == 128 + SIGINT || code == 128 + SIGTERM));
    CHECK_CONTAINS(read_text(t / "err"), "a second stop signal: ending at once, without saving");
    REQUIRE(fs::exists(t / "b/latest.safetensors"));
    CHECK_NOTHROW(load_safetensors(t / "b/latest.safetensors"));
  }
  SECTION("run --nproc 2: the launcher forwards SIGTERM, every rank stops after the same step, it waits") {
    const pid_t pid = start(long_run(t / "c") + " --nproc 2", t / "err");
    REQUIRE(wait_for_text(t / "err", "step 5/", 120s));
    ::kill(pid, SIGTERM);
    CliResult r{wait_exit(pid, 120s), "", read_text(t / "err")};
    check_one_clean_error(r, "stopped by SIGTERM after step ");
    const int64_t step = step_of(t / "c/latest.safetensors");
    CHECK_CONTAINS(r.err, "after step " + std::to_string(step) + " of");
    CHECK_NOTHROW(lock_run_folder(t / "c"));  // no rank holds the folder: the launcher waited for them
  }
  SECTION(
      "run --nproc 2: a launcher killed outright takes its ranks down with a checkpoint, not orphans that train on") {
    const pid_t pid = start(long_run(t / "d") + " --nproc 2", t / "err");
    REQUIRE(wait_for_text(t / "err", "step 5/", 120s));
    ::kill(pid, SIGKILL);
    wait_exit(pid, 30s);
    bool released = false;
    for (int i = 0; i < 600 && !released; ++i) {
      released = error_of([&] { lock_run_folder(t / "d"); }).empty();
      if (!released) std::this_thread::sleep_for(100ms);
    }
    REQUIRE(released);
    CHECK(step_of(t / "d/latest.safetensors") >= 5);
    CHECK(wait_for_text(t / "err", "stopped by SIGTERM after step", 30s));  // the folder is released just before
  }
}

TEST_CASE("edited optimizer state is refused on resume, naming the tensor, rng.cpu is required",
          "[hardening2][checkpoint]") {
  TempDir t;
  const auto resume_error = [&](const std::string& optimizer, const std::string& file, const std::string& dir) {
    return error_of([&] {
      train_experiment(kExp, {"optimizer.name=" + optimizer, "trainer.out_dir=" + dir, "trainer.resume=" + file,
                              "trainer.max_steps=3"});
    });
  };
  for (const std::string opt : {"adamw", "muon", "sophia"}) {
    INFO(opt);
    train_experiment(kExp, {"optimizer.name=" + opt, "trainer.out_dir=" + (t / opt)});
    const std::string ck = t / (opt + "/latest.safetensors");
    const std::string bad = t / (opt + "_bad.safetensors");
    int n = 0;
    auto check = [&](const std::function<void(TensorMap&)>& edit, const std::string& expect) {
      edit_checkpoint(ck, bad, [&](TensorMap& m, Metadata&) { edit(m); });
      CHECK_CONTAINS(resume_error(opt, bad, t / (opt + "_r" + std::to_string(n++))), expect);
    };
    check([](TensorMap& m) { m["optim.step"] = at::full({}, -100, at::kLong); },
          opt + " state 'step' is -100, not a count");
    check([](TensorMap& m) { m["optim.step"] = at::full({}, 2.5, at::kFloat); },
          "tensor 'optim.step' is Float [], but the optimizer's is Long");
    check([](TensorMap& m) { m["optim.bogus"] = at::zeros({2}); }, opt + " state 'bogus' is not one " + opt + " keeps");
    const std::string first = opt == "muon" ? "blocks.0.qkv.weight.momentum_buffer" : "blocks.0.qkv.weight.exp_avg";
    check([&](TensorMap& m) { m.erase("optim." + first); }, "has no " + opt + " state '" + first + "'");
    const std::string second = opt == "sophia" ? "hessian" : "exp_avg_sq";
    check([&](TensorMap& m) { m["optim.wte.weight." + second].view(-1)[0] = -1.0; },
          opt + " state 'wte.weight." + second + "' holds negative values");
    check([](TensorMap& m) { m.erase("rng.cpu"); }, "has no 'rng.cpu' tensor");
    check([](TensorMap& m) { m["stray"] = at::zeros({1}); }, "tensor 'stray' is not one a run writes");
    check([](TensorMap& m) { m["extra.value.w"] = at::zeros({1}); },
          "tensor 'extra.value.w' belongs to no trainable group");
    check([](TensorMap& m) { m["model.blocks.9.w"] = at::zeros({1}); },
          "tensor 'model.blocks.9.w' is not part of the model");
  }
  // The error names the file and where the optimizer's tensors are, through the runner as one line.
  write_text(t / "exp.yaml", kExp);
  edit_checkpoint(t / "adamw/latest.safetensors", t / "neg.safetensors",
                  [](TensorMap& m, Metadata&) { m["optim.step"] = at::full({}, -100, at::kLong); });
  check_one_clean_error(run_cli("run " + (t / "exp.yaml") + " --set trainer.out_dir=" + (t / "cli") +
                                " --set trainer.resume=" + (t / "neg.safetensors")),
                        "checkpoint " + (t / "neg.safetensors") +
                            " (optimizer state, stored as 'optim.<key>'): adamw state 'step' is -100");
}

TEST_CASE("validate refuses what run refuses: files, devices, blocks, trainers, launches, the sample prompt",
          "[hardening2][cli]") {
  TempDir t;
  write_text(t / "exp.yaml", kExp);
  REQUIRE(run_cli("run " + (t / "exp.yaml") + " --set trainer.out_dir=" + (t / "done")).code == 0);
  write_text(t / "file", "x");
  write_text(t / "tiny.txt", "0123456789\n");
  write_text(t / "empty.txt", "");
  write_text(t / "short.safetensors", "1234");
  fs::create_directories(t / "folder");
  const std::string none = t / "none";
  // (what is set, what both commands must say): the issue's 18 and the checks next to them.
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"model.blocks.attention.n_head=5", "n_head"},  // 5 heads in a width of 32
      {"model.blocks.attention.n_head=4 --set model.blocks.attention.n_kv_head=3", "n_kv_head"},
      {"'model.block_pattern=[mamba]' --set model.blocks.mamba.dt_rank=weird", "dt_rank"},
      {"precision=bf16", "precision: bf16 needs a CUDA device"},
      {"device=cuda", "device: cuda was asked for"},
      {"trainer.name=grpo", "trainer 'grpo' needs a task section"},
      {"trainer.name=ppo --set task.name=arithmetic",
       "trainer 'ppo' starts from a trained model: set trainer.init_from"},
      {"data.path=" + none, "data.path: '" + none + "' does not exist"},
      {"data.path=" + (t / "folder"), "is a folder without meta.json"},
      {"data.path=" + (t / "tiny.txt"), "but each needs at least seq_len + 1"},
      {"data.path=" + (t / "empty.txt"), "is empty"},
      {"data.path=builtin:nope", "unknown built-in corpus"},
      {"data.tokenizer=" + none + ".json", "does not exist"},
      {"data.tokenizer=gpt2", "set LINEARNEXUS_TOKENIZER_DIR"},
      {"trainer.init_from=" + none, "checkpoint '" + none + "' does not exist"},
      {"trainer.resume=" + none, "checkpoint '" + none + "' does not exist"},
      {"trainer.resume=" + (t / "short.safetensors"), "it is shorter than a header"},
      {"trainer.out_dir=" + (t / "file"), "trainer.out_dir: cannot create"},
      {"trainer.out_dir=" + (t / "done"), "already holds checkpoints"},
      {"model.vocab_size=3", "is smaller than the tokenizer's vocabulary"},
      {"model.vocab_size=1000000000000", "building the model needs more memory than this machine has"},
      {"sample.num_samples=1 --set 'sample.prompt=xyz'", "sample.prompt cannot be encoded"},
      {"'optimizer.betas=[0.9]'", "optimizer.betas must be two numbers"},
  };
  for (const auto& [set, expect] : cases) {
    INFO(set);
    const std::string env = "env -u LINEARNEXUS_TOKENIZER_DIR";
    const bool own_out = set.find("trainer.out_dir") != std::string::npos;
    check_one_clean_error(run_cli("validate " + (t / "exp.yaml") + " --set " + set, env), expect);
    check_one_clean_error(
        run_cli("run " + (t / "exp.yaml") + (own_out ? "" : " --set trainer.out_dir=" + (t / "r")) + " --set " + set,
                env),
        expect);
  }
  CHECK_FALSE(fs::exists(t / "r/latest.safetensors"));
  // A launch without MASTER_ADDR, and a folder another run holds.
  check_one_clean_error(run_cli("validate " + (t / "exp.yaml"), "WORLD_SIZE=2 RANK=0"), "MASTER_ADDR is not");
  {
    auto lock = lock_run_folder(t / "done");
    check_one_clean_error(run_cli("validate " + (t / "exp.yaml") + " --set trainer.out_dir=" + (t / "done") +
                                  " --set trainer.resume=auto"),
                          "is in use by another run (pid " + std::to_string(::getpid()) + ")");
  }
  // What validate may look at it only reads: nothing is created.
  CHECK(run_cli("validate " + (t / "exp.yaml") + " --set trainer.out_dir=" + (t / "fresh")).code == 0);
  CHECK_FALSE(fs::exists(t / "fresh"));
}

TEST_CASE("an out-of-vocabulary prompt is an error line of its own, not glued to the echoed prompt",
          "[hardening2][cli]") {
  TempDir t;
  write_text(t / "exp.yaml", kExp);
  REQUIRE(run_cli("run " + (t / "exp.yaml") + " --set trainer.out_dir=" + (t / "a")).code == 0);
  auto r = run_cli("sample --checkpoint " + (t / "a") + " --prompt 'xyz'");
  check_one_clean_error(r, "character 'x' (byte 0x78) is not in this run's character vocabulary");
  CHECK(r.out.find("xyz") == std::string::npos);  // nothing echoed before the error
}
