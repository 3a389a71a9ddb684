// Untrusted inputs (issue #21): checkpoints and plugin folders that must not run code, and corrupt
// checkpoints and prepared data that must end in one clean error, never a crash or a silent load.
// Each test makes its bad file itself.
#include "catch.h"

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstring>

#include "linearnexus/host/run_checkpoint.h"
#include "linearnexus/host/data.h"
#include "linearnexus/error.h"
#include "linearnexus/host/plugin_host.h"
#include "linearnexus/host/session.h"
#include "linearnexus/host/token_files.h"
#include "test_util.h"

using namespace linearnexus;
using namespace lntest;
using nlohmann::json;

namespace {

const char* kExp = R"(name: hard
data: {path: "builtin:arithmetic", seq_len: 16}
model: {hidden_size: 16, n_layer: 1, max_seq_len: 32, block_pattern: [attention], blocks: {attention: {n_head: 2}}}
trainer: {name: sft, max_steps: 2, batch_size: 2, log_every: 1, eval_batches: 1}
sample: {num_samples: 0}
)";

// A finished 2-step run in `dir`; returns its latest checkpoint.
std::string trained_checkpoint(const std::string& dir) {
  train_experiment(kExp, {"trainer.out_dir=" + dir});
  return dir + "/latest.safetensors";
}

// The same checkpoint with its tensors / metadata changed by `edit`, written to `out`.
template <class F>
void edit_checkpoint(const std::string& in, const std::string& out, F&& edit) {
  auto ck = load_safetensors(in);
  edit(ck.tensors, ck.metadata);
  save_safetensors(out, ck.tensors, ck.metadata);
}

// The same file with its JSON header changed by `edit` (the data section kept byte for byte).
template <class F>
void edit_header(const std::string& in, const std::string& out, F&& edit) {
  const std::string bytes = read_text(in);
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(static_cast<unsigned char>(bytes[i])) << (8 * i);
  json h = json::parse(bytes.substr(8, n));
  edit(h);
  const std::string text = h.dump();
  std::string len(8, '\0');
  for (int i = 0; i < 8; ++i) len[i] = static_cast<char>(text.size() >> (8 * i));
  std::ofstream(out, std::ios::binary) << len << text << bytes.substr(8 + n);
}

std::string raw_file(const std::string& header_json, const std::string& data) {
  std::string len(8, '\0');
  for (int i = 0; i < 8; ++i) len[i] = static_cast<char>(header_json.size() >> (8 * i));
  return len + header_json + data;
}

std::string resume_error(const std::string& file, const std::string& out_dir) {
  return error_of([&] { train_experiment(kExp, {"trainer.out_dir=" + out_dir, "trainer.resume=" + file}); });
}

}  // namespace

// ---- 1, 2: plugins --------------------------------------------------------------------------------

TEST_CASE("a checkpoint's plugins.paths are never loaded, an experiment's resolve against its own folder",
          "[hardening]") {
  const std::string plugins = LINEARNEXUS_TEST_PLUGIN_DIR;
  TempDir t;
  fs::create_directories(t / "exp/plug");
  fs::copy_file(plugins + "/good_v1/good_identity.so", t / "exp/plug/good_identity.so");
  // Relative to exp.yaml's folder, not to the working directory (the test runs elsewhere).
  write_text(t / "exp/exp.yaml", std::string(kExp) + "plugins: {paths: [plug]}\n");
  auto run = run_cli("run " + (t / "exp/exp.yaml") +
                     " --set 'model.block_pattern=[test_identity]' --set trainer.out_dir=" + (t / "a"));
  INFO(run.err);
  REQUIRE(run.code == 0);
  const std::string config = read_safetensors_metadata(t / "a/latest.safetensors").at("config");
  CHECK_CONTAINS(config, (t / "exp/plug"));  // recorded absolute
  // The checkpoint names that folder, but sampling from it must not load it.
  check_one_clean_error(
      run_cli("sample --checkpoint " + (t / "a") + " --max-tokens 2"),
      "needs block 'test_identity' from plugin 'good_identity' 1.0.0, which is not on the plugin path");
  PluginHost host;
  CHECK_CONTAINS(error_of([&] { load_model_from_checkpoint(t / "a", host); }), "needs block 'test_identity'");
  for (const auto& p : host.plugins()) CHECK(p.name != "good_identity");
  // With the plugin on the user's own path it loads, the recorded paths still ignored.
  CHECK(
      run_cli("sample --checkpoint " + (t / "a") + " --max-tokens 2", "LINEARNEXUS_PLUGIN_PATH=" + plugins + "/good_v1")
          .code == 0);
}

TEST_CASE("a library in a plugin folder that exports no entry point is skipped unloaded, with a warning",
          "[hardening]") {
  const std::string plugins = LINEARNEXUS_TEST_PLUGIN_DIR;
  TempDir t;
  // static_init.so ends the process if it is ever loaded (as a stray libc10.so copy did).
  fs::copy_file(plugins + "/static_init.so", t / "static_init.so");
  fs::copy_file(plugins + "/good_v1/good_identity.so", t / "good_identity.so");
  PluginHost host;
  host.load_dir(t.path.string());
  CHECK(host.problems().empty());
  CHECK(host.registry().find(PluginKind::Block, "test_identity") != nullptr);
  CHECK_CONTAINS(error_of([&] { host.load_file(t / "static_init.so"); }), "not a LinearNexus plugin");
  write_text(t / "exp.yaml", kExp);
  auto v = run_cli("validate " + (t / "exp.yaml"), "LINEARNEXUS_PLUGIN_PATH=" + t.path.string());
  CHECK(v.code == 0);
  CHECK_CONTAINS(v.err, "static_init.so: skipped: it exports no 'linearnexus_plugin_info' entry point");
  // A stripped plugin (no .symtab) still exports its entry point in .dynsym and loads.
  TempDir s;
  fs::copy_file(plugins + "/good_v1/good_identity.so", s / "good_identity.so");
  if (std::system(("strip " + (s / "good_identity.so") + " 2>/dev/null").c_str()) == 0) {
    PluginHost h2;
    h2.load_dir(s.path.string());
    CHECK(h2.registry().find(PluginKind::Block, "test_identity") != nullptr);
  }
}

// ---- 8, 9, 13: checkpoints ---------------------------------------------------------------------------

TEST_CASE("checkpoint headers nested 100k levels deep are refused before parsing, in the header and in metadata",
          "[hardening]") {
  TempDir t;
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  write_text(t / "deep.safetensors", raw_file("{\"__metadata__\": {\"a\": " + deep + "}}", ""));
  CHECK_CONTAINS(error_of([&] { load_safetensors(t / "deep.safetensors"); }), "nested deeper than");
  // A metadata string holding deep JSON (the tokenizer, the plugins record) is refused as well.
  const std::string ck = trained_checkpoint(t / "a");
  edit_checkpoint(ck, t / "tok.safetensors", [&](TensorMap&, Metadata& m) { m["tokenizer"] = deep; });
  check_one_clean_error(run_cli("sample --checkpoint " + (t / "tok.safetensors")), "tokenizer");
  write_text(t / "exp.yaml", kExp);
  check_one_clean_error(run_cli("run " + (t / "exp.yaml") + " --set trainer.out_dir=" + (t / "b") +
                                " --set trainer.init_from=" + (t / "tok.safetensors")),
                        "tok.safetensors");
  edit_checkpoint(ck, t / "plug.safetensors", [&](TensorMap&, Metadata& m) { m["plugins"] = deep; });
  CHECK_CONTAINS(resume_error(t / "plug.safetensors", t / "c"), "metadata 'plugins'");
}

TEST_CASE("checkpoint headers: bad dtypes, shapes, spans and overlaps name the tensor", "[hardening]") {
  TempDir t;
  const std::string data(64, '\0');
  auto err = [&](const std::string& header) {
    write_text(t / "x.safetensors", raw_file(header, data));
    return error_of([&] { load_safetensors(t / "x.safetensors"); });
  };
  auto one = [](const std::string& dtype, const std::string& shape, const std::string& offs) {
    return "{\"w\": {\"dtype\": \"" + dtype + "\", \"shape\": " + shape + ", \"data_offsets\": " + offs + "}}";
  };
  CHECK(err(one("F32", "[4, 4]", "[0, 64]")).empty());
  CHECK_CONTAINS(err(one("F32", "[-4, -4]", "[0, 64]")),
                 "tensor 'w' has a shape dimension that is not a non-negative integer");
  CHECK_CONTAINS(err(one("F32", "[4611686018427387904, 8]", "[0, 64]")), "tensor 'w' has a shape whose size overflows");
  CHECK_CONTAINS(err(one("F32", "[4, 4]", "[0, 6400]")), "beyond the end of the file");
  CHECK_CONTAINS(err(one("F32", "[4, 5]", "[0, 64]")), "is 64 bytes in the file, but its dtype F32 and shape need 80");
  CHECK_CONTAINS(err(one("Q4", "[4, 4]", "[0, 64]")), "unknown dtype 'Q4'");
  CHECK_CONTAINS(err(one("F32", "[\"4\"]", "[0, 16]")), "tensor 'w' has a shape dimension");
  CHECK_CONTAINS(err(one("F32", "[4]", "[16]")), "tensor 'w' has no valid data_offsets");
  CHECK_CONTAINS(err("{\"a\": {\"dtype\": \"F32\", \"shape\": [8], \"data_offsets\": [0, 32]}, "
                     "\"b\": {\"dtype\": \"F32\", \"shape\": [8], \"data_offsets\": [16, 48]}}"),
                 "tensors 'a' and 'b' overlap");
  CHECK_CONTAINS(err("{\"__metadata__\": {\"step\": 5}}"), "metadata 'step' is not a string");
  CHECK_CONTAINS(err("[1, 2]"), "not a JSON object");
  const std::string msg = err(one("F32", "[-1]", "[0, 64]"));
  CHECK(msg.rfind("checkpoint " + (t / "x.safetensors") + ": tensor 'w'", 0) == 0);
  // Through the runner: one line, no backtrace.
  check_one_clean_error(run_cli("sample --checkpoint " + (t / "x.safetensors")), "x.safetensors");
}

TEST_CASE("checkpoint contents: relabelled dtype, NaN weights, bad step, bad RNG state, missing metadata",
          "[hardening]") {
  TempDir t;
  const std::string ck = trained_checkpoint(t / "a");
  edit_header(ck, t / "relabel.safetensors", [](json& h) { h["model.wte.weight"]["dtype"] = "I32"; });
  CHECK_CONTAINS(resume_error(t / "relabel.safetensors", t / "r1"),
                 "tensor 'model.wte.weight' is Int, but the model's is Float");
  edit_checkpoint(ck, t / "nan.safetensors", [](TensorMap& m, Metadata&) { m["model.wte.weight"][0][0] = NAN; });
  CHECK_CONTAINS(resume_error(t / "nan.safetensors", t / "r2"), "tensor 'model.wte.weight' holds NaN");
  PluginHost host;
  CHECK_CONTAINS(error_of([&] { load_model_from_checkpoint(t / "nan.safetensors", host); }), "holds NaN");
  edit_checkpoint(ck, t / "optnan.safetensors", [](TensorMap& m, Metadata&) {
    for (auto& [k, v] : m)
      if (k.rfind("optim.", 0) == 0 && v.is_floating_point() && v.numel() > 0) v.view(-1)[0] = INFINITY;
  });
  CHECK_CONTAINS(resume_error(t / "optnan.safetensors", t / "r3"), "holds NaN or infinite values");
  edit_checkpoint(ck, t / "optshape.safetensors", [](TensorMap& m, Metadata&) {
    for (auto& [k, v] : m)
      if (k.rfind("optim.", 0) == 0 && v.dim() == 2) v = torch::zeros({v.size(0) + 1, v.size(1)});
  });
  CHECK_CONTAINS(resume_error(t / "optshape.safetensors", t / "r3b"), "but the optimizer's is Float [");
  for (const std::string step : {"-5", "abc", "", "99999999999999999999"}) {
    edit_checkpoint(ck, t / "step.safetensors", [&](TensorMap&, Metadata& m) { m["step"] = step; });
    CHECK_CONTAINS(resume_error(t / "step.safetensors", t / "r4"),
                   "metadata 'step' is '" + step + "', not a non-negative whole number");
  }
  edit_checkpoint(ck, t / "nostep.safetensors", [](TensorMap&, Metadata& m) { m.erase("step"); });
  CHECK_CONTAINS(resume_error(t / "nostep.safetensors", t / "r5"), "its metadata has no 'step' entry");
  edit_checkpoint(ck, t / "rng.safetensors",
                  [](TensorMap& m, Metadata&) { m["rng.cpu"] = torch::zeros({7}, at::kByte); });
  CHECK_CONTAINS(resume_error(t / "rng.safetensors", t / "r6"), "tensor 'rng.cpu' is not a random generator state");
  edit_checkpoint(ck, t / "rng2.safetensors",
                  [](TensorMap& m, Metadata&) { m["rng.cpu"] = torch::full_like(m["rng.cpu"], 255); });
  const std::string rng2 = resume_error(t / "rng2.safetensors", t / "r7");
  if (!rng2.empty()) CHECK_CONTAINS(rng2, "tensor 'rng.cpu' is refused by LibTorch");
  CHECK(rng2.find("Exception raised from") == std::string::npos);
  edit_checkpoint(ck, t / "noconf.safetensors", [](TensorMap&, Metadata& m) { m.erase("config"); });
  CHECK_CONTAINS(error_of([&] { load_model_from_checkpoint(t / "noconf.safetensors", host); }),
                 "its metadata has no 'config' entry");
  edit_checkpoint(ck, t / "plug.safetensors",
                  [](TensorMap&, Metadata& m) { m["plugins"] = "{\"block:attention\": 5}"; });
  CHECK_CONTAINS(resume_error(t / "plug.safetensors", t / "r8"), "metadata 'plugins' is not a map");
  edit_checkpoint(ck, t / "tok.safetensors",
                  [](TensorMap&, Metadata& m) { m["tokenizer"] = "{\"kind\": \"char\", \"bytes\": [300]}"; });
  CHECK_CONTAINS(resume_error(t / "tok.safetensors", t / "r9"), "not a distinct byte value");
  // Through the runner, resuming: one clean line.
  write_text(t / "exp.yaml", kExp);
  edit_checkpoint(ck, t / "step.safetensors", [&](TensorMap&, Metadata& m) { m["step"] = "-5"; });
  check_one_clean_error(run_cli("run " + (t / "exp.yaml") + " --set trainer.out_dir=" + (t / "r10") +
                                " --set trainer.resume=" + (t / "step.safetensors")),
                        "metadata 'step' is '-5'");
}

TEST_CASE("a char checkpoint resumed or used as init_from with tokenizer: gpt2 is refused", "[hardening]") {
  TempDir t;
  const std::string ck = trained_checkpoint(t / "a");
  CHECK_CONTAINS(
      error_of([&] {
        train_experiment(kExp, {"trainer.out_dir=" + (t / "b"), "trainer.resume=" + ck, "data.tokenizer=gpt2"});
      }),
      "data.tokenizer is 'gpt2', but checkpoint " + ck + " was trained with the char tokenizer");
  CHECK_CONTAINS(
      error_of([&] {
        train_experiment(kExp, {"trainer.out_dir=" + (t / "c"), "trainer.init_from=" + ck, "data.tokenizer=gpt2"});
      }),
      "was trained with the char tokenizer");
  // A prepared folder brings its own tokenizer: it must be the checkpoint's.
  write_text(t / "text.txt", std::string(2000, 'x') + "yz\n");
  PrepareOptions o;
  o.inputs = {t / "text.txt"}, o.tokenizer = "char", o.out_dir = t / "prep", o.val_fraction = 0.2, o.progress = false;
  prepare_token_files(o);
  CHECK_CONTAINS(
      error_of([&] {
        train_experiment(kExp, {"trainer.out_dir=" + (t / "d"), "trainer.resume=" + ck, "data.path=" + (t / "prep")});
      }),
      "but checkpoint " + ck + " was trained with a char tokenizer of");
}

// ---- 10, 13: prepared data ---------------------------------------------------------------------------

namespace {
// A prepared char folder of ~2000 tokens; returns its folder.
std::string prepared(const TempDir& t) {
  std::string text;
  for (int i = 0; i < 200; ++i) text += "abc" + std::to_string(i) + "\n";
  write_text(t / "text.txt", text);
  PrepareOptions o;
  o.inputs = {t / "text.txt"}, o.tokenizer = "char", o.out_dir = t / "prep", o.val_fraction = 0.1, o.progress = false;
  prepare_token_files(o);
  return t / "prep";
}
void set_meta(const std::string& dir, const std::function<void(json&)>& edit) {
  json m = json::parse(read_text(dir + "/meta.json"));
  edit(m);
  write_text(dir + "/meta.json", m.dump());
}
}  // namespace

TEST_CASE("prepared data: a shard changed after prepare fails its SHA-256, the check is cached by size and mtime",
          "[hardening]") {
  TempDir t;
  const std::string dir = prepared(t);
  load_prepared(dir);
  const json cache = json::parse(read_text(dir + "/verified.json"));
  CHECK(cache.contains("train.bin"));
  CHECK(cache.contains("val.bin"));
  std::string bytes = read_text(dir + "/train.bin");
  bytes[10] = bytes[12];
  bytes[11] = bytes[13];
  write_text(dir + "/train.bin", bytes);
  fs::last_write_time(dir + "/train.bin", fs::last_write_time(dir + "/train.bin") + std::chrono::seconds(5));
  CHECK_CONTAINS(error_of([&] { load_prepared(dir); }), "train.bin' does not match meta.json (SHA-256");
}

TEST_CASE("prepared data: token ids past the vocabulary, a changed tokenizer, a bad meta.json: clean errors",
          "[hardening]") {
  TempDir t;
  const std::string dir = prepared(t);
  // An id past the vocabulary, with meta.json's hash updated so only the id is wrong.
  std::string bytes = read_text(dir + "/train.bin");
  bytes[20] = '\xff', bytes[21] = '\x00';
  write_text(dir + "/train.bin", bytes);
  set_meta(dir, [&](json& m) { m["train"]["sha256"][0] = sha256_file(dir + "/train.bin"); });
  auto splits = load_prepared(dir);
  std::vector<int64_t> out(64);
  CHECK_CONTAINS(error_of([&] { splits.train->read(0, 64, out.data()); }),
                 "holds token id 255 at token 10, but the vocabulary");
  // The tokenizer relabelled (fewer characters than vocab_size says).
  set_meta(dir, [](json& m) { m["tokenizer"]["bytes"] = {97, 98}; });
  CHECK_CONTAINS(error_of([&] { load_prepared(dir); }), "has 2 tokens but vocab_size says");
  set_meta(dir, [](json& m) { m["tokenizer"] = {{"kind", "gpt2"}, {"spec", 5}}; });
  CHECK_CONTAINS(error_of([&] { load_prepared(dir); }), "'tokenizer'");
  set_meta(dir, [](json& m) { m["train"]["tokens"] = {"many"}; });
  CHECK_CONTAINS(error_of([&] { load_prepared(dir); }), "'train.tokens' holds \"many\"");
  set_meta(dir, [](json& m) { m["train"]["files"] = {"../text.txt"}; });
  CHECK_CONTAINS(error_of([&] { load_prepared(dir); }), "not a file name in the folder");
  write_text(dir + "/meta.json", std::string(100000, '[') + std::string(100000, ']'));
  CHECK_CONTAINS(error_of([&] { load_prepared(dir); }), "nested deeper than");
}

TEST_CASE("prepared data: a shard truncated while training is an error, not SIGBUS", "[hardening]") {
  TempDir t;
  const std::string dir = prepared(t);
  auto splits = load_prepared(dir);
  std::vector<int64_t> out(32);
  splits.train->read(100, 32, out.data());
  fs::resize_file(dir + "/train.bin", 50);
  CHECK_CONTAINS(error_of([&] { splits.train->read(100, 32, out.data()); }), "became shorter while training");
  // And on open, a size that disagrees with meta.json.
  CHECK_CONTAINS(error_of([&] { load_prepared(dir); }), "holds 50 bytes, but meta.json says");
}
