// What a run shows and leaves behind (issue #32, Observability): TensorBoard event files read back by
// an independent reader (tests/tensorboard_reader.py: python3-protobuf, its own CRC32C) and compared
// with metrics.jsonl, a resume's SessionLog START, train.log, the metrics' wall-clock time, the step-0
// evaluation, stop_after's message, the max_steps warning, the lock file and the folder of a run that
// never started, eval's progress, sample's tokens/s, scripts/plot_metrics.sh.
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <thread>

#include "linearnexus/host/run_log.h"
#include "linearnexus/host/scoring.h"
#include "linearnexus/host/tensorboard.h"
#include "linearnexus/log.h"
#include "test_util.h"

using namespace linearnexus;
using namespace lntest;
using nlohmann::json;

namespace {

const char* kExp = R"(name: obs
data: {path: "builtin:arithmetic", seq_len: 16}
model: {hidden_size: 16, n_layer: 1, max_seq_len: 32, block_pattern: [attention], blocks: {attention: {n_head: 2}}}
schedule: {warmup_steps: 2}
trainer: {name: sft, max_steps: 6, batch_size: 4, log_every: 2, eval_every: 3, eval_batches: 2, save_every: 3, keep_last_n: 4,
          trackers: [jsonl, tensorboard]}
sample: {num_samples: 1, max_tokens: 6, prompt: "1+1="}
)";

std::string python() { return fs::exists("/usr/bin/python3") ? "/usr/bin/python3" : "python3"; }

// The run's TensorBoard folder as tensorboard_reader.py reads it; false with the reason when python3
// or google.protobuf is missing.
bool read_events(const std::string& run_dir, json& events, std::string& why) {
  TempDir t;
  const std::string cmd = python() + " '" LINEARNEXUS_SOURCE_DIR "/tests/tensorboard_reader.py' '" + run_dir +
                          "/tb' > " + (t / "out.json") + " 2> " + (t / "err.txt");
  const int status = std::system(cmd.c_str());
  const int rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  if (rc == 127) why = "python3 is not installed";
  if (rc == 3)
    why = "python3 cannot import google.protobuf (apt-get install python3-protobuf): " + read_text(t / "err.txt");
  if (!why.empty()) return false;
  INFO("tensorboard_reader.py: " << read_text(t / "err.txt"));
  REQUIRE(rc == 0);
  events = json::parse(read_text(t / "out.json"));
  return true;
}

// The scalars TensorBoard shows: replays its purge of orphaned data (a SessionLog START at step s
// drops the scalars logged before it at s and later), in the order the reader numbered the events.
std::map<std::pair<int64_t, std::string>, double> shown_scalars(const json& events) {
  std::map<std::pair<int64_t, std::string>, double> out;
  size_t next_start = 0;
  const json& starts = events["session_starts"];
  for (const auto& s : events["scalars"]) {
    for (; next_start < starts.size() && starts[next_start][0] < s[0]; ++next_start)
      for (auto it = out.begin(); it != out.end();)
        it = it->first.first >= starts[next_start][1].get<int64_t>() ? out.erase(it) : std::next(it);
    const std::pair<int64_t, std::string> key{s[1].get<int64_t>(), s[2].get<std::string>()};
    CHECK(out.count(key) == 0);  // each step's value once, after the purge
    out[key] = s[3].get<double>();
  }
  return out;
}

double as_float(double v) { return static_cast<double>(static_cast<float>(v)); }

// Every value of every metrics.jsonl line, at float32 precision, among the TensorBoard scalars.
void check_scalars_match_metrics(const std::string& run_dir, const json& events) {
  const auto shown = shown_scalars(events);
  size_t compared = 0;
  for (const auto& [step, line] : read_metrics(run_dir)) {
    for (const auto& [key, value] : line.items()) {
      if (key == "step" || key == "time") continue;
      INFO("step " << step << " " << key);
      auto it = shown.find({step, key});
      REQUIRE(it != shown.end());
      CHECK(it->second == as_float(value.get<double>()));
      ++compared;
    }
  }
  CHECK(compared > 20);
  CHECK(compared == shown.size());  // nothing TensorBoard shows that metrics.jsonl lacks
}

}  // namespace

TEST_CASE("crc32c: the Castagnoli check value", "[observability]") {
  CHECK(crc32c("123456789", 9) == 0xE3069283u);
  CHECK(crc32c("", 0) == 0u);
}

TEST_CASE("a run's TensorBoard files, train.log and metrics.jsonl tell the same story", "[observability]") {
  TempDir t;
  write_text(t / "exp.yaml", kExp);
  const double before = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  auto r = run_cli("run " + (t / "exp.yaml") + " --set trainer.out_dir=" + (t / "run"), "LINEARNEXUS_NUM_THREADS=1");
  const double after = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  INFO(r.err);
  REQUIRE(r.code == 0);
  auto m = read_metrics(t / "run");
  // Step 0: where the model starts; then log steps 2, 3 (eval), 4, 6.
  REQUIRE(m.count(0));
  CHECK(m[0].contains("val_loss"));
  CHECK(!m[0].contains("loss"));
  for (int64_t s : {2, 3, 4, 6}) CHECK(m.count(s));
  CHECK(m[3].contains("val_loss"));
  for (const auto& [step, line] : m) {
    REQUIRE(line.contains("time"));
    CHECK(line["time"].get<double>() >= before - 1);
    CHECK(line["time"].get<double>() <= after + 1);
  }
  CHECK(!fs::exists(t / "run/.lock"));  // removed when the run ended

  json events;
  std::string why;
  if (!read_events(t / "run", events, why)) LN_SKIP(why);
  CHECK(events["files"] == 1);
  CHECK(events["file_versions"] == json::array({"brain.Event:2"}));
  CHECK(events["session_starts"].empty());
  check_scalars_match_metrics(t / "run", events);
  REQUIRE(events["texts"].size() == 1);
  CHECK(events["texts"][0][0] == 0);
  CHECK(events["texts"][0][1] == "experiment");
  // The resolved experiment, as config.yaml holds it (indented as a Markdown code block).
  std::string text = events["texts"][0][2], unindented;
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);) {
    CHECK(line.rfind("    ", 0) == 0);
    unindented += line.substr(4) + "\n";
  }
  CHECK(unindented == read_text(t / "run/config.yaml"));
  CHECK_CONTAINS(unindented, "trackers: [jsonl, tensorboard]");

  // train.log: what stderr showed (the progress lines, the description, the threads), the samples
  // stdout showed.
  const std::string log = read_text(t / "run/train.log");
  for (const char* part : {"step 0/6 | val_loss", "step 6/6 | grad_norm", "ETA", "run folder:",
                           "CPU threads (from LINEARNEXUS_NUM_THREADS)", "---- sample 1 ----\n1+1=", "tokens/s"})
    CHECK_CONTAINS(log, part);
  CHECK_CONTAINS(r.err, "tokens/s");
  // Every console line, word for word after its time stamp (the file's carries the date too).
  std::istringstream err(r.err);
  for (std::string line; std::getline(err, line);) CHECK_CONTAINS(log, line.substr(line.find(']') + 1) + "\n");
}

TEST_CASE("a resume: SessionLog START where it restarts, metrics.jsonl cut the same way, max_steps warned",
          "[observability]") {
  TempDir t;
  write_text(t / "exp.yaml", kExp);
  const std::string exp = "run " + (t / "exp.yaml") + " --no-sample --set trainer.out_dir=" + (t / "run");
  REQUIRE(run_cli(exp).code == 0);
  // Back to step 3's checkpoint: steps 4..6 are logged again, by the second invocation.
  auto again = run_cli(exp + " --set trainer.resume=" + (t / "run/step_00000003.safetensors"));
  INFO(again.err);
  REQUIRE(again.code == 0);
  CHECK(again.err.find("max_steps") == std::string::npos);
  json events;
  std::string why;
  if (!read_events(t / "run", events, why)) LN_SKIP(why);
  CHECK(events["files"] == 2);
  REQUIRE(events["session_starts"].size() == 1);
  CHECK(events["session_starts"][0][1] == 4);
  // TensorBoard's view: the first file's steps 4..6 purged by the START, the second's shown.
  check_scalars_match_metrics(t / "run", events);
  CHECK(events["texts"].size() == 2);
  CHECK(events["texts"][1][0] == 4);

  // stop_after: says it stopped early and how to go on; a changed max_steps on resume is warned.
  auto early = run_cli(exp + " --set trainer.out_dir=" + (t / "early") + " --set trainer.stop_after=2");
  CHECK(early.code == 0);
  CHECK_CONTAINS(early.err,
                 "stopped early after step 2 of 6 (trainer.stop_after: 2); continue with trainer.resume: auto");
  auto longer =
      run_cli(exp + " --set trainer.out_dir=" + (t / "early") + " --set trainer.resume=auto --set trainer.max_steps=8");
  INFO(longer.err);
  CHECK(longer.code == 0);
  CHECK_CONTAINS(longer.err, "trainer.max_steps is 8 now and was 6 when the checkpoint was saved");
  CHECK_CONTAINS(read_text(t / "early/train.log"), "trainer.max_steps is 8 now");  // appended to the first part's log
  CHECK_CONTAINS(read_text(t / "early/train.log"), "stopped early after step 2");
}

TEST_CASE("a run that fails before training leaves no folder, a run that ran keeps its folder but not its lock",
          "[observability]") {
  TempDir t;
  write_text(t / "exp.yaml", kExp);
  const std::string exp = "run " + (t / "exp.yaml") + " --set 'trainer.trackers=[jsonl]' ";
  // Checks that need the data or the tokenizer fail after the folder was made: it goes again, with the
  // folders above it that the run created.
  check_one_clean_error(
      run_cli(exp + "--set trainer.out_dir=" + (t / "new/deeper/run") + " --set 'sample.prompt=no digits'"),
      "sample.prompt cannot be encoded");
  CHECK(!fs::exists(t / "new"));
  check_one_clean_error(
      run_cli(exp + "--set trainer.out_dir=" + (t / "new/run") + " --set data.path=" + (t / "missing.txt")),
      "missing.txt");
  CHECK(!fs::exists(t / "new"));
  // A folder that was there before is the user's: it stays.
  fs::create_directories(t / "mine");
  check_one_clean_error(run_cli(exp + "--set trainer.out_dir=" + (t / "mine") + " --set 'sample.prompt=no digits'"),
                        "sample.prompt cannot be encoded");
  CHECK(fs::exists(t / "mine"));
  CHECK(!fs::exists(t / "mine/.lock"));
  // A finished run: no lock file; its folder is free for the next run (here: a resume that samples).
  REQUIRE(run_cli(exp + "--no-sample --set trainer.out_dir=" + (t / "ok")).code == 0);
  CHECK(fs::exists(t / "ok/latest.safetensors"));
  CHECK(!fs::exists(t / "ok/.lock"));
  CHECK(!fs::exists(t / "ok/tb"));  // trackers: [jsonl] alone
  CHECK(run_cli(exp + "--set trainer.out_dir=" + (t / "ok") + " --set trainer.resume=auto").code == 0);
  // A fresh run whose init_from checkpoint does not fit its model fails as it starts: no folder either.
  check_one_clean_error(run_cli(exp + "--no-sample --set trainer.out_dir=" + (t / "new/run") +
                                " --set trainer.init_from=" + (t / "ok") + " --set model.hidden_size=32"),
                        "does not match the model");
  CHECK(!fs::exists(t / "new"));

  // eval reports its progress on long inputs (score_tokens' callback, logged every few seconds).
  PluginHost host;
  LoadedModel lm = load_model_from_checkpoint(t / "ok", host, "cpu");
  std::vector<int64_t> ids(40, 1);
  std::vector<std::pair<int64_t, int64_t>> calls;
  score_tokens(*lm.model, ids, 8, [&](int64_t scored, int64_t total) { calls.emplace_back(scored, total); });
  CHECK(calls == std::vector<std::pair<int64_t, int64_t>>{{8, 39}, {16, 39}, {24, 39}, {32, 39}, {39, 39}});
  // sample reports tokens/s on stderr.
  auto sample = run_cli("sample --checkpoint " + (t / "ok") + " --max-tokens 5 --prompt 1+");
  CHECK(sample.code == 0);
  CHECK_CONTAINS(sample.err, "sample 1: ");
  CHECK_CONTAINS(sample.err, "tokens/s");
}

TEST_CASE("scripts/plot_metrics.sh plots a run's metrics.jsonl", "[observability]") {
  if (std::system("command -v gnuplot >/dev/null 2>&1") != 0)
    LN_SKIP("gnuplot is not installed (scripts/setup.sh installs gnuplot-nox)");
  TempDir t;
  write_text(t / "exp.yaml", kExp);
  REQUIRE(run_cli("run " + (t / "exp.yaml") +
                  " --no-sample --set 'trainer.trackers=[jsonl]' --set trainer.out_dir=" + (t / "run"))
              .code == 0);
  const std::string script = LINEARNEXUS_SOURCE_DIR "/scripts/plot_metrics.sh";
  TempDir o;
  const int rc = std::system(("bash " + script + " " + (t / "run") + " >" + (o / "out") + " 2>" + (o / "err")).c_str());
  INFO(read_text(o / "err"));
  REQUIRE(WEXITSTATUS(rc) == 0);
  const std::string png = read_text(t / "run/metrics.png");
  REQUIRE(png.size() > 1000);
  CHECK(png.substr(0, 8) == "\x89PNG\r\n\x1a\n");
  // A folder without metrics is one clear error.
  const int bad = std::system(("bash " + script + " " + (o / "") + " >/dev/null 2>" + (o / "err2")).c_str());
  CHECK(WEXITSTATUS(bad) == 1);
  CHECK_CONTAINS(read_text(o / "err2"), "metrics.jsonl not found");
}

TEST_CASE("the ETA is the run's average step time since it started, not the last interval's", "[observability]") {
  TempDir t;
  PluginHost host;
  const Experiment e = parse("data: {path: x}\ntrainer: {max_steps: 1001, trackers: []}\n", host);
  RunLog log(e, t.path.string(), true);
  log.start(0, "");
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // the first step: slow (0.3 s)
  {
    auto file = log_to_file(t / "log.txt");
    // The last interval claims 1 ms per step: 1 s for the 1000 steps left. The average says >= 300 s.
    log.print({{"step", 1}, {"ms_per_step", 1.0}, {"loss", 2.0}});
  }
  const std::string text = read_text(t / "log.txt");
  INFO(text);
  const auto eta = text.rfind("ETA ");
  REQUIRE(eta != std::string::npos);
  const std::string value = text.substr(eta + 4, text.find('\n', eta) - eta - 4);
  CHECK(value.find('m') != std::string::npos);  // minutes, e.g. 5m02s
  CHECK(std::atoi(value.c_str()) >= 5);
}
