// Hardening, round two (issue #33), files: named pipes, devices and oversized files under a file's
// name (2), Hugging Face folders whose config.json lies (4), exports that are complete or absent
// (6), run folders that carry their tokenizer (9), and the silent acceptances of (11). Each test
// makes its bad file itself; every CLI call runs under `timeout`, so a hang fails instead of waiting.
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <thread>

#include "catch.h"
#include "linearnexus/host/hf_convert.h"
#include "linearnexus/host/run_checkpoint.h"
#include "linearnexus/host/tokenizers.h"
#include "test_util.h"

using namespace linearnexus;
using namespace lntest;
using nlohmann::json;

namespace {

const char* kExp = R"(name: files
data: {path: "builtin:arithmetic", seq_len: 16}
model: {hidden_size: 16, n_layer: 1, max_seq_len: 32, block_pattern: [attention], blocks: {attention: {n_head: 2}}}
trainer: {name: sft, max_steps: 2, batch_size: 2, log_every: 1, eval_batches: 1}
sample: {num_samples: 0}
)";
const std::string kTimeout = "timeout 120";  // a hang ends as exit 124, which check_one_clean_error refuses

std::string hf_fixture(const std::string& arch) { return std::string(LINEARNEXUS_TEST_FIXTURES_DIR) + "/hf/" + arch; }
std::string tok_fixture(const std::string& name) {
  return std::string(LINEARNEXUS_TEST_FIXTURES_DIR) + "/hf_tokenizers/" + name;
}

// A copy of a fixture folder to break.
std::string copy_dir(const std::string& from, const std::string& to) {
  fs::create_directories(to);
  for (const auto& e : fs::directory_iterator(from)) fs::copy_file(e.path(), fs::path(to) / e.path().filename());
  return to;
}

void fifo(const std::string& path) {
  fs::remove(path);
  REQUIRE(::mkfifo(path.c_str(), 0644) == 0);
}
void link_to(const std::string& target, const std::string& path) {
  fs::remove(path);
  fs::create_symlink(target, path);
}
void edit_json(const std::string& path, const std::function<void(json&)>& edit) {
  json j = json::parse(read_text(path));
  edit(j);
  write_text(path, j.dump(2));
}

}  // namespace

TEST_CASE("named pipes, devices and oversized files under a file's name are one error, never a hang or a flood",
          "[hardening2][files]") {
  TempDir t;
  write_text(t / "exp.yaml", kExp);
  // The experiment file itself.
  fifo(t / "fifo.yaml");
  check_one_clean_error(run_cli("validate " + (t / "fifo.yaml"), kTimeout),
                        "experiment file '" + (t / "fifo.yaml") + "' is a named pipe (FIFO), not a regular file");
  link_to("/dev/zero", t / "zero.yaml");
  check_one_clean_error(run_cli("validate " + (t / "zero.yaml"), kTimeout),
                        "is a character device, not a regular file");
  write_text(t / "big.yaml", kExp);
  fs::resize_file(t / "big.yaml", 17u << 20);  // sparse: no disk used
  check_one_clean_error(run_cli("validate " + (t / "big.yaml"), kTimeout),
                        "is 17.0 MiB, over the 16.0 MiB limit for experiment files");
  // data.path, a shard of a prepared folder, a checkpoint, eval --text.
  fifo(t / "text.fifo");
  check_one_clean_error(run_cli("run " + (t / "exp.yaml") + " --set data.path=" + (t / "text.fifo") +
                                    " --set trainer.out_dir=" + (t / "r0"),
                                kTimeout),
                        "data.path: text file '" + (t / "text.fifo") + "' is a named pipe");
  std::string text;
  for (int i = 0; i < 300; ++i) text += "abc" + std::to_string(i) + "\n";
  write_text(t / "corpus.txt", text);
  REQUIRE(
      run_cli("data prepare --tokenizer char --no-progress --input " + (t / "corpus.txt") + " --out " + (t / "prep"))
          .code == 0);
  fifo(t / "prep/train.bin");
  check_one_clean_error(
      run_cli("run " + (t / "exp.yaml") + " --set data.path=" + (t / "prep") + " --set trainer.out_dir=" + (t / "r1"),
              kTimeout),
      "token file '" + (t / "prep/train.bin") + "' is a named pipe");
  fifo(t / "ck.safetensors");
  check_one_clean_error(run_cli("sample --checkpoint " + (t / "ck.safetensors"), kTimeout), "is a named pipe");
  REQUIRE(run_cli("run " + (t / "exp.yaml") + " --set trainer.out_dir=" + (t / "run")).code == 0);
  check_one_clean_error(run_cli("eval --checkpoint " + (t / "run") + " --text /dev/zero", kTimeout),
                        "eval --text: text file '/dev/zero' is a character device");
  // A run folder's own files: metrics.jsonl read back on resume, the .lock.
  fs::remove(t / "run/metrics.jsonl");
  fifo(t / "run/metrics.jsonl");
  check_one_clean_error(run_cli("run " + (t / "exp.yaml") + " --set trainer.out_dir=" + (t / "run") +
                                    " --set trainer.resume=auto --set trainer.max_steps=3",
                                kTimeout),
                        "metrics file '" + (t / "run/metrics.jsonl") + "' is a named pipe");
  // A FIFO named x.so on the plugin path is skipped with a warning, not opened.
  fs::create_directories(t / "plug");
  fifo(t / "plug/x.so");
  auto v = run_cli("validate " + (t / "exp.yaml"), kTimeout + " env LINEARNEXUS_PLUGIN_PATH=" + (t / "plug"));
  INFO(v.err);
  CHECK(v.code == 0);
  CHECK_CONTAINS(v.err, (t / "plug/x.so") + ": skipped: not a regular file");
}

TEST_CASE("hf-import: a named pipe or /dev/zero in the folder is an error, and nothing is written",
          "[hardening2][files][hf]") {
  TempDir t;
  const auto refused = [&](const std::string& name, const std::string& expect) {
    INFO(name);
    const std::string out = t / ("out_" + name);
    check_one_clean_error(run_cli("convert hf-import " + (t / name) + " " + out, kTimeout), expect);
    CHECK_FALSE(fs::exists(out));
    for (const auto& e : fs::directory_iterator(t.path))
      CHECK(e.path().filename().string().find(".partial-") == std::string::npos);
  };
  fifo(copy_dir(hf_fixture("llama"), t / "cfg") + "/config.json");
  refused("cfg", "config.json' is a named pipe");
  link_to("/dev/zero", copy_dir(hf_fixture("llama"), t / "gen") + "/generation_config.json");
  refused("gen", "generation_config.json' is a character device");
  link_to("/dev/zero", copy_dir(hf_fixture("llama"), t / "tokzero") + "/tokenizer.json");
  refused("tokzero", "tokenizer.json' is a character device");
  fifo(copy_dir(hf_fixture("llama"), t / "tokfifo") + "/tokenizer.json");
  refused("tokfifo", "tokenizer.json' is a named pipe");
  fifo(copy_dir(hf_fixture("llama"), t / "weights") + "/model.safetensors");
  refused("weights", "model.safetensors' is a named pipe");
}

TEST_CASE("hf-import checks config.json against the weights before building anything", "[hardening2][files][hf]") {
  TempDir t;
  PluginHost host;
  const auto import_error = [&](const std::string& dir) { return error_of([&] { hf_import(dir, t / "out", host); }); };
  const auto t0 = std::chrono::steady_clock::now();
  // 100000 layers in config.json, 2 in the weights: refused before a layer is built.
  const std::string layers = copy_dir(hf_fixture("llama"), t / "layers");
  edit_json(layers + "/config.json", [](json& c) { c["num_hidden_layers"] = 100000; });
  CHECK_CONTAINS(import_error(layers),
                 "config.json: it gives the model 100000 layers (model.n_layer), but the weights hold 2");
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(20));
  // A width the embedding does not have.
  const std::string width = copy_dir(hf_fixture("llama"), t / "width");
  edit_json(width + "/config.json", [](json& c) { c["hidden_size"] = 4096, c["head_dim"] = 1024; });
  CHECK_CONTAINS(import_error(width), "tensor 'model.embed_tokens.weight' is [96, 32], but");
  // A fused tensor whose parts do not fit together is named, not LibTorch's "Sizes of tensors must match".
  const std::string lie = copy_dir(hf_fixture("llama"), t / "lie");
  {
    auto f = load_safetensors(lie + "/model.safetensors");
    f.tensors["model.layers.0.self_attn.k_proj.weight"] = at::zeros({16, 40});
    save_safetensors(lie + "/model.safetensors", f.tensors, f.metadata);
  }
  const std::string e = import_error(lie);
  CHECK_CONTAINS(e, "'model.layers.0.self_attn.k_proj.weight' [16, 40] in " + lie + "/model.safetensors");
  CHECK_CONTAINS(e, "does not fit config.json");
  CHECK(e.find("Sizes of tensors") == std::string::npos);
  // Values of the wrong type are errors, not the defaults in disguise.
  const std::string theta = copy_dir(hf_fixture("llama"), t / "theta");
  edit_json(theta + "/config.json", [](json& c) { c["rope_parameters"]["rope_theta"] = "x"; });
  CHECK_CONTAINS(import_error(theta), "rope_parameters is");
  CHECK_CONTAINS(import_error(theta), "expected rope_theta to be a number");
  const std::string rank = copy_dir(hf_fixture("mamba"), t / "rank");
  edit_json(rank + "/config.json", [](json& c) { c["time_step_rank"] = "weird"; });
  CHECK_CONTAINS(import_error(rank), "time_step_rank is \"weird\"; expected a positive whole number or \"auto\"");
  // Token ids are bounded by the vocabulary the file defines: an id of 10^8 costs an error, not gigabytes.
  const std::string tok = copy_dir(tok_fixture("llama3"), t / "tok");
  edit_json(tok + "/tokenizer.json", [](json& j) { j["added_tokens"][0]["id"] = 100000000; });
  CHECK_CONTAINS(error_of([&] { load_tokenizer(tok); }), "added_tokens[0] has id 100000000, but the file defines");
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(60));
  CHECK_FALSE(fs::exists(t / "out"));
  // Through the runner: one line.
  check_one_clean_error(run_cli("convert hf-import " + layers + " " + (t / "cli"), kTimeout), "but the weights hold 2");
}

TEST_CASE("hf-export is complete or absent: kill -9, SIGTERM and a full disk leave no folder that looks finished",
          "[hardening2][files][hf]") {
  TempDir t;
  PluginHost host;
  hf_import(hf_fixture("llama"), t / "imp", host);
  const std::string export_cmd = std::string(LINEARNEXUS_RUNNER) + " convert hf-export " + (t / "imp") + " ";
  // What a finished export holds: config.json and weights that load.
  const auto complete = [&](const std::string& dir) {
    return fs::exists(dir + "/config.json") && fs::exists(dir + "/model.safetensors") &&
           error_of([&] { load_safetensors(dir + "/model.safetensors"); }).empty() &&
           json::accept(read_text(dir + "/config.json"));
  };
  // A full disk (RLIMIT_FSIZE; SIGXFSZ ignored so writes fail with EFBIG): an error, nothing left.
  check_one_clean_error(run_cli("convert hf-export " + (t / "imp") + " " + (t / "full"), "trap '' XFSZ; ulimit -f 40;"),
                        "disk full?");
  CHECK_FALSE(fs::exists(t / "full"));
  // Killed at arbitrary points (kill -9 and SIGTERM, which ends the process by default): the target
  // is either absent or complete, never half-written; a retry needs nothing removed by hand.
  int absent = 0;
  for (int i = 0; i < 10; ++i) {
    const std::string out = t / ("k" + std::to_string(i));
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      ::execl("/bin/sh", "sh", "-c", ("exec " + export_cmd + out + " >/dev/null 2>&1").c_str(),
              static_cast<char*>(nullptr));
      ::_exit(127);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(300 + 150 * i));
    ::kill(pid, i % 3 == 2 ? SIGTERM : SIGKILL);
    int status = 0;
    ::waitpid(pid, &status, 0);
    INFO("kill " << i);
    if (!fs::exists(out))
      ++absent;
    else
      CHECK(complete(out));
    if (!fs::exists(out)) REQUIRE(run_cli("convert hf-export " + (t / "imp") + " " + out).code == 0);
    CHECK(complete(out));
  }
  INFO("exports killed before they finished: " << absent);
  // The last exports cleaned up the temporary folders the killed ones left (their processes are gone).
  for (const auto& e : fs::directory_iterator(t.path))
    CHECK(e.path().filename().string().find(".partial-") == std::string::npos);
  // The export loads back (bit-exact, as test_hf_convert checks in general).
  hf_import(t / "k0", t / "back", host);
  CHECK(load_safetensors(t / "back/latest.safetensors")
            .tensors.at("model.wte.weight")
            .equal(load_safetensors(t / "imp/latest.safetensors").tensors.at("model.wte.weight")));
}

TEST_CASE("a run keeps its tokenizer files in its folder, a copied run folder reads its own", "[hardening2][files]") {
  TempDir t;
  copy_dir(tok_fixture("llama3"), t / "tok");
  std::string text;
  for (int i = 0; i < 400; ++i) text += "The quick brown fox " + std::to_string(i) + " jumps.\n";
  write_text(t / "corpus.txt", text);
  write_text(t / "exp.yaml", std::string(kExp) + "");
  const std::string set = " --set data.path=" + (t / "corpus.txt") + " --set data.tokenizer=" + (t / "tok");
  auto r = run_cli("run " + (t / "exp.yaml") + set + " --set trainer.out_dir=" + (t / "run"));
  INFO(r.err);
  REQUIRE(r.code == 0);
  CHECK(fs::exists(t / "run/tokenizer/tokenizer.json"));
  CHECK(fs::exists(t / "run/tokenizer/tokenizer_config.json"));
  const json saved = json::parse(read_safetensors_metadata(t / "run/latest.safetensors").at("tokenizer"));
  CHECK(saved == json({{"kind", "hf"}, {"path", "tokenizer/tokenizer.json"}}));  // relative: the folder's own
  CHECK(json::parse(read_text(t / "run/tokenizer.json")) == saved);
  // The original files gone and the first run's copy broken: a copy of the folder still reads its own.
  fs::copy(t / "run", t / "copy", fs::copy_options::recursive);
  remove_tree(t / "tok");
  write_text(t / "run/tokenizer/tokenizer.json", "{broken");
  auto s = run_cli("sample --checkpoint " + (t / "copy") + " --prompt 'The quick' --max-tokens 3");
  INFO(s.err);
  CHECK(s.code == 0);
  CHECK(s.out.find("The quick") != std::string::npos);
  auto resumed =
      run_cli("run " + (t / "exp.yaml") + set + " --set data.tokenizer=" + (t / "copy") +
              " --set trainer.out_dir=" + (t / "copy") + " --set trainer.resume=auto --set trainer.max_steps=3");
  INFO(resumed.err);
  CHECK(resumed.code == 0);
  CHECK(json::parse(read_safetensors_metadata(t / "copy/latest.safetensors").at("tokenizer")) == saved);
}

TEST_CASE(
    "silent acceptances refused: trailing bytes, colliding tokens, a negative lr, a stray RANK, a tiny temperature is greedy",
    "[hardening2][files]") {
  TempDir t;
  // A safetensors file with bytes after its last tensor (the safetensors library refuses it too).
  save_safetensors(t / "x.safetensors", {{"w", at::ones({4})}}, {});
  { std::ofstream(t / "x.safetensors", std::ios::app) << "payload"; }
  CHECK_CONTAINS(error_of([&] { load_safetensors(t / "x.safetensors"); }),
                 "its data section has 7 trailing bytes after the last tensor");
  // Tokenizer files: two tokens with one id; an added token that collides with a vocabulary entry.
  const std::string dup = copy_dir(tok_fixture("llama3"), t / "dup");
  edit_json(dup + "/tokenizer.json", [](json& j) { j["model"]["vocab"]["!"] = j["model"]["vocab"]["\""]; });
  CHECK_CONTAINS(error_of([&] { load_tokenizer(dup); }), "which another token of model.vocab has too");
  const std::string clash = copy_dir(tok_fixture("llama3"), t / "clash");
  edit_json(clash + "/tokenizer.json", [](json& j) { j["added_tokens"][0]["id"] = 5; });
  CHECK_CONTAINS(error_of([&] { load_tokenizer(clash); }), "collides with model.vocab's token of that id");
  // A negative learning rate is gradient ascent: refused for every optimizer.
  write_text(t / "exp.yaml", kExp);
  for (const std::string key : {"optimizer.lr=-0.01", "optimizer.name=muon --set optimizer.adamw_lr=-1",
                                "optimizer.name=sophia --set optimizer.lr=-1"}) {
    INFO(key);
    check_one_clean_error(run_cli("validate " + (t / "exp.yaml") + " --set " + key), "must be >= 0");
  }
  check_one_clean_error(run_cli("validate " + (t / "exp.yaml") + " --set 'optimizer.betas=[0.9, 1.0]'"),
                        "optimizer.betas must be two numbers in [0, 1)");
  // A launch that is not what it seems.
  const std::string run = "run " + (t / "exp.yaml") + " --set trainer.out_dir=" + (t / "r");
  check_one_clean_error(run_cli(run, "WORLD_SIZE=1 RANK=5"), "RANK=5 but WORLD_SIZE is 1");
  check_one_clean_error(run_cli(run, "WORLD_SIZE=99999999999 RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT=1234"),
                        "WORLD_SIZE must be in 1..1048576");
  // --temperature 1e-40 is the greedy limit, not token 0 forever.
  REQUIRE(run_cli(run).code == 0);
  auto greedy = run_cli("sample --checkpoint " + (t / "r") + " --prompt '12+' --max-tokens 8 --temperature 0");
  auto tiny = run_cli("sample --checkpoint " + (t / "r") + " --prompt '12+' --max-tokens 8 --temperature 1e-40");
  REQUIRE(greedy.code == 0);
  REQUIRE(tiny.code == 0);
  CHECK(tiny.out == greedy.out);
}
