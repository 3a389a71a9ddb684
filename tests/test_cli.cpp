// The thread count and the command line (issue #32, Threads and the CLI): LINEARNEXUS_NUM_THREADS /
// OMP_NUM_THREADS / the physical cores, typed options in --help, suggestions for mistyped commands,
// `presets`, `--set` with text for string keys, trainer.trackers' values.
#include <cstdlib>
#include <optional>
#include <thread>

#include "linearnexus/host/presets.h"
#include "linearnexus/host/preflight.h"
#include "env_var.h"
#include "test_util.h"

using namespace linearnexus;
using namespace lntest;

TEST_CASE("threads: LINEARNEXUS_NUM_THREADS, then OMP_NUM_THREADS, then the physical cores", "[cli]") {
  {
    EnvVar a("LINEARNEXUS_NUM_THREADS", "3"), b("OMP_NUM_THREADS", "5");
    CHECK(choose_num_threads().threads == 3);
    CHECK(choose_num_threads().source == "LINEARNEXUS_NUM_THREADS");
  }
  {
    EnvVar a("LINEARNEXUS_NUM_THREADS", nullptr), b("OMP_NUM_THREADS", "5");
    CHECK(choose_num_threads().threads == 5);
    CHECK(choose_num_threads().source == "OMP_NUM_THREADS");
  }
  {
    EnvVar a("LINEARNEXUS_NUM_THREADS", nullptr), b("OMP_NUM_THREADS", "4,2");  // per nesting level: the first
    CHECK(choose_num_threads().threads == 4);
  }
  {
    EnvVar a("LINEARNEXUS_NUM_THREADS", nullptr), b("OMP_NUM_THREADS", nullptr);
    const ThreadChoice c = choose_num_threads();
    CHECK(c.source.empty());
    CHECK(c.threads >= 1);
    CHECK(c.threads <= static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
    CHECK_CONTAINS(c.describe(), "physical cores");
  }
  for (const char* bad : {"0", "-2", "two", "4x", "", "99999"}) {
    INFO("value '" << bad << "'");
    EnvVar a("LINEARNEXUS_NUM_THREADS", bad);
    CHECK_CONTAINS(error_of([] { choose_num_threads(); }),
                   "LINEARNEXUS_NUM_THREADS='" + std::string(bad) + "' is not a number of threads");
  }
  // The program refuses a bad value before anything else, naming the variable.
  check_one_clean_error(run_cli("presets", "env -u LINEARNEXUS_NUM_THREADS OMP_NUM_THREADS=many"),
                        "OMP_NUM_THREADS='many' is not a number of threads");
  check_one_clean_error(run_cli("--version", "LINEARNEXUS_NUM_THREADS=0"), "LINEARNEXUS_NUM_THREADS='0'");
}

TEST_CASE("help: numbers shown as numbers, defaults without artefacts", "[cli]") {
  auto sample = run_cli("sample --help");
  CHECK(sample.code == 0);
  for (const char* part : {"--max-tokens INT", "--temperature FLOAT", "--top-k INT", "--top-p FLOAT",
                           "--num-samples INT", "--prompt TEXT", "--seed UINT"})
    CHECK_CONTAINS(sample.out, part);
  CHECK_CONTAINS(run_cli("run --help").out, "--lr FLOAT");
  auto prepare = run_cli("data prepare --help");
  CHECK(prepare.code == 0);
  CHECK(prepare.out.find("{false}") == std::string::npos);
  CHECK(prepare.out.find("{true}") == std::string::npos);
  CHECK_CONTAINS(prepare.out, "--val-fraction FLOAT=0.005");
  CHECK_CONTAINS(prepare.out, "(default: a progress bar)");
  // Typed options refuse what is not a number, in one line.
  check_one_clean_error(run_cli("sample --checkpoint x --max-tokens many"), "--max-tokens");
  check_one_clean_error(run_cli("validate x.yaml --lr fast"), "--lr");
}

TEST_CASE("a mistyped command gets the nearest one", "[cli]") {
  check_one_clean_error(run_cli("trian x.yaml"), "unknown command 'trian'; did you mean 'run'?");
  check_one_clean_error(run_cli("smaple"), "unknown command 'smaple'; did you mean 'sample'?");
  check_one_clean_error(run_cli("vaildate x.yaml"), "did you mean 'validate'?");
  check_one_clean_error(run_cli("convert hf-imprt a b"),
                        "unknown command 'convert hf-imprt'; did you mean 'convert hf-import'?");
  auto far = run_cli("zzzzzzzz");
  check_one_clean_error(far, "unknown command 'zzzzzzzz' (commands: run, validate, sample");
  CHECK(far.err.find("did you mean") == std::string::npos);
  // Right commands with wrong options keep CLI11's own message.
  check_one_clean_error(run_cli("presets --nope"), "--nope");
}

TEST_CASE("presets: each preset's size and block pattern", "[cli]") {
  auto r = run_cli("presets");
  INFO(r.err);
  REQUIRE(r.code == 0);
  CHECK_CONTAINS(r.out, "gpt-small: 123.6M parameters (123551232");  // GPT-2 small without learned positions
  CHECK_CONTAINS(r.out, " with vocabulary 50257), 12 layers of 768, block_pattern [attention]\n");
  CHECK_CONTAINS(r.out, "jamba-small: ");
  CHECK_CONTAINS(r.out, "16 layers of 768, block_pattern [mamba, mamba, mamba, mamba, mamba, mamba, mamba, attention]");
  // The count extrapolated from one cycle of the pattern equals a whole model's.
  TempDir t;
  write_text(t / "mixed.yaml",
             "# a test preset\nhidden_size: 32\nn_layer: 5\nmax_seq_len: 64\nblock_pattern: [attention, mamba]\n"
             "blocks: {attention: {n_head: 2}}\n");
  EnvVar path("LINEARNEXUS_PRESET_PATH", t.path.c_str());
  PluginHost host;
  const std::string listing = describe_presets(host);
  Experiment e = parse("data: {path: x}\nmodel: {preset: mixed}\n", host);
  const auto model = build_model(e.model_config(50257), host.registry(), "test");
  char expect[96];
  std::snprintf(expect, sizeof expect, "mixed: %.1fM parameters (%lld with vocabulary 50257, GPT-2's",
                model->num_parameters() / 1e6, static_cast<long long>(model->num_parameters()));
  CHECK_CONTAINS(listing, expect);
  CHECK_CONTAINS(listing, "5 layers of 32, block_pattern [attention, mamba]\n    a test preset\n");
}

TEST_CASE("set overrides: text for a string key as typed, YAML for the rest, and trackers' values", "[cli]") {
  PluginHost host;
  // ": " would make a YAML map, " #" a comment: a string key takes the text.
  Experiment e = parse("data: {path: x}\n", host, {"sample.prompt=Q: 1+1=? # two", "trainer.max_steps=7"});
  CHECK(e.sample.prompt == "Q: 1+1=? # two");
  CHECK(e.trainer.max_steps == 7);
  CHECK(parse("data: {path: x}\n", host, {"sample.prompt=\"quoted: yes\""}).sample.prompt == "quoted: yes");
  CHECK(parse("data: {path: x}\n", host, {"data.path=a: b"}).data.path == "a: b");
  // Not a string key: the value is YAML, and a map is refused by name.
  CHECK_CONTAINS(error_of([&] { parse("data: {path: x}\n", host, {"trainer.max_steps=a: b"}); }),
                 "'trainer.max_steps' must be an integer");
  CHECK_CONTAINS(error_of([&] { parse("data: {path: x}\n", host, {"model.block_pattern=[attention"}); }),
                 "model.block_pattern");
  auto v = run_cli("validate --print " LINEARNEXUS_SOURCE_DIR
                   "/configs/quickstart.yaml --set 'sample.prompt=A: b' --set sample.num_samples=0");
  INFO(v.err);
  CHECK(v.code == 0);
  CHECK_CONTAINS(v.out, "prompt: \"A: b\"");

  // trainer.trackers: jsonl (the default) and tensorboard; anything else is refused naming the key.
  CHECK(parse("data: {path: x}\n", host).trainer.jsonl);
  CHECK(!parse("data: {path: x}\n", host).trainer.tensorboard);
  Experiment tb = parse("data: {path: x}\ntrainer: {trackers: [tensorboard]}\n", host);
  CHECK(tb.trainer.tensorboard);
  CHECK(!tb.trainer.jsonl);
  CHECK_CONTAINS(error_of([&] { parse("data: {path: x}\ntrainer: {trackers: [jsonl, wandb]}\n", host); }),
                 "'trainer.trackers' must be a list of: jsonl, tensorboard (got 'wandb')");
}
