// Core: experiment validation, the plugin host, schedules, checkpoints, tokenizer and batches.
#include <link.h>

#include <filesystem>

#include "catch.h"
#include "linearnexus/host/run_checkpoint.h"
#include "linearnexus/host/data.h"
#include "linearnexus/error.h"
#include "linearnexus/model.h"
#include "linearnexus/optimizer.h"
#include "linearnexus/plugin.h"
#include "linearnexus/host/session.h"
#include "test_util.h"

using namespace linearnexus;
using namespace lntest;

static const char* kTinyExperiment = R"(
name: tiny
data: {path: "builtin:arithmetic", seq_len: 16}
model: {hidden_size: 32, n_layer: 2, max_seq_len: 64, block_pattern: [attention], blocks: {attention: {n_head: 4}}}
trainer: {name: sft, max_steps: 5}
)";

// ---- experiment validation --------------------------------------------------------------------

TEST_CASE("malformed YAML is reported with file, line and column", "[config]") {
  PluginHost host;
  auto msg = error_of([&] { parse("model:\n  n_layer: [1, 2\nname: x\n", host); });
  CHECK_CONTAINS(msg, "test.yaml:3:");
  CHECK_CONTAINS(msg, "malformed YAML");
}

TEST_CASE("an unknown key names file, line, and the nearest valid key", "[config]") {
  PluginHost host;
  auto msg = error_of([&] { parse(std::string(kTinyExperiment) + "schedule:\n  warmup_step: 10\n", host); });
  CHECK_CONTAINS(msg, "test.yaml:7:3");
  CHECK_CONTAINS(msg, "unknown key 'warmup_step'");
  CHECK_CONTAINS(msg, "did you mean 'warmup_steps'");
  auto top = error_of([&] { parse(std::string(kTinyExperiment) + "trainr: {}\n", host); });
  CHECK_CONTAINS(top, "did you mean 'trainer'");
  auto block = error_of([&] { parse(std::string(kTinyExperiment), host, {"model.blocks.attention.n_heads=2"}); });
  CHECK_CONTAINS(block, "--set model.blocks.attention.n_heads");
  CHECK_CONTAINS(block, "did you mean 'n_head'");
}

TEST_CASE("a value of the wrong type is refused with its key", "[config]") {
  PluginHost host;
  auto msg = error_of([&] { parse(kTinyExperiment, host, {"trainer.max_steps=ten"}); });
  CHECK_CONTAINS(msg, "'trainer.max_steps' must be an integer");
  auto choice = error_of([&] { parse(kTinyExperiment, host, {"device=gpu"}); });
  CHECK_CONTAINS(choice, "must be one of: auto, cpu, cuda");
}

TEST_CASE("device: cuda without CUDA, and precision: bf16 on the CPU, are each one clear error", "[config]") {
  PluginHost host;
  TempDir t;
  const std::string out = "trainer.out_dir=" + (t / "run");
  auto bf16 = error_of([&] { prepare_run(parse(kTinyExperiment, host, {"device=cpu", "precision=bf16", out}), host); });
  CHECK_CONTAINS(bf16, "precision: bf16 needs a CUDA device");
  CHECK_CONTAINS(bf16, "use precision: fp32 on the CPU");
  if (at::hasCUDA()) return;  // the rest is about machines without CUDA
  auto cuda = error_of([&] { prepare_run(parse(kTinyExperiment, host, {"device=cuda", out}), host); });
  CHECK_CONTAINS(cuda, "device: cuda was asked for");
  CHECK_CONTAINS(cuda, "use device: cpu or device: auto");
  CHECK(resolve_device("auto") == at::Device(at::kCPU));
}

TEST_CASE("an unknown plugin name lists the available ones", "[config]") {
  PluginHost host;
  auto msg = error_of([&] { parse(kTinyExperiment, host, {"model.block_pattern=[atention]"}); });
  CHECK_CONTAINS(msg, "unknown block 'atention'");
  CHECK_CONTAINS(msg, "did you mean 'attention'");
  CHECK_CONTAINS(msg, "available: attention");
  auto opt = error_of([&] { parse(kTinyExperiment, host, {"optimizer.name=adamx"}); });
  CHECK_CONTAINS(opt, "unknown optimizer 'adamx'");
}

TEST_CASE("overrides, defaults and the resolved experiment", "[config]") {
  PluginHost host;
  Experiment e = parse(kTinyExperiment, host, {"trainer.max_steps=7", "optimizer.lr=0.01"});
  CHECK(e.trainer.max_steps == 7);
  CHECK(e.optimizer.get_float("lr") == Approx(0.01));
  CHECK(e.trainer_params.get_int("batch_size") == 16);  // default filled in
  CHECK_FALSE(e.trainer_params.has("max_steps"));       // the host's key, parsed once into e.trainer
  CHECK(e.model.block_params.at("attention").get_int("n_head") == 4);
  // The resolved YAML is a fixed point: parsing it gives the same resolved YAML.
  Experiment again = parse(e.resolved_yaml, host);
  CHECK(again.resolved_yaml == e.resolved_yaml);
}

TEST_CASE("choosing another optimizer on the command line drops the file's keys the new optimizer does not have",
          "[config]") {
  PluginHost host;
  const std::string yaml =
      std::string(kTinyExperiment) + "optimizer: {name: adamw, lr: 2e-3, betas: [0.9, 0.99], weight_decay: 0.1}\n";
  // `linearnexus run exp.yaml --optimizer muon --lr 0.02`: betas is adamw's; muon has weight_decay.
  Experiment e = parse(yaml, host, {"optimizer.name=muon", "optimizer.lr=0.02"});
  CHECK(e.optimizer_name == "muon");
  CHECK(e.optimizer.get_float("lr") == Approx(0.02));
  CHECK(e.optimizer.get_float("weight_decay") == Approx(0.1));
  // Written in the file itself, or set on the command line, an unknown key is still an error.
  auto in_file =
      error_of([&] { parse(std::string(kTinyExperiment) + "optimizer: {name: muon, betas: [0.9, 0.99]}\n", host); });
  CHECK_CONTAINS(in_file, "betas");
  auto on_cli = error_of([&] { parse(yaml, host, {"optimizer.name=muon", "optimizer.betas=[0.9, 0.9]"}); });
  CHECK_CONTAINS(on_cli, "betas");
}

TEST_CASE("model presets fill the model section and the file overrides them", "[config]") {
  PluginHost host;
  Experiment e = parse("data: {path: x}\nmodel: {preset: gpt-small, n_layer: 2}\n", host);
  CHECK(e.model.dims.hidden_size == 768);
  CHECK(e.model.dims.n_layer == 2);
  CHECK(e.model.block_params.at("attention").get_int("n_head") == 12);
  CHECK_CONTAINS(error_of([&] { parse("data: {path: x}\nmodel: {preset: gpt-huge}\n", host); }),
                 "unknown model preset 'gpt-huge'");
}

// ---- plugin host ------------------------------------------------------------------------------

static bool library_mapped(const std::string& suffix) {
  struct Q {
    std::string suffix;
    bool found = false;
  } q{suffix};
  dl_iterate_phdr(
      [](dl_phdr_info* info, size_t, void* data) {
        auto* q = static_cast<Q*>(data);
        std::string name = info->dlpi_name ? info->dlpi_name : "";
        if (name.size() >= q->suffix.size() &&
            name.compare(name.size() - q->suffix.size(), q->suffix.size(), q->suffix) == 0)
          q->found = true;
        return 0;
      },
      &q);
  return q.found;
}

TEST_CASE("the host loads the real plugins and records where each came from", "[plugins]") {
  PluginHost host;
  std::vector<std::string> names;
  for (const auto& p : host.plugins()) names.push_back(p.name);
  for (const char* want : {"attention", "adamw", "sft"})
    CHECK(std::find(names.begin(), names.end(), want) != names.end());
  const auto& r = host.registry().get(PluginKind::Block, "attention");
  CHECK_THAT(r.origin.file, Catch::Matchers::EndsWith("attention.so"));
  CHECK(r.origin.plugin_version == "1.0.0");
  CHECK_FALSE(r.schema.empty());
  CHECK_CONTAINS(describe_schema(r.schema), "n_kv_head");
}

TEST_CASE("plugins built for another ABI or LibTorch are refused, naming file and versions", "[plugins]") {
  PluginHost host;
  const std::string dir = LINEARNEXUS_TEST_PLUGIN_DIR;
  auto abi = error_of([&] { host.load_file(dir + "/bad_abi.so"); });
  CHECK_CONTAINS(abi, "bad_abi.so");
  CHECK_CONTAINS(abi, "ABI version 999");
  CHECK_CONTAINS(abi, "ABI version " + std::to_string(LINEARNEXUS_PLUGIN_ABI_VERSION));
  // A plugin built before ABI 2 (parameter roles) is told, in one line, to be rebuilt.
  CHECK(error_of([&] { host.load_file(dir + "/old_abi.so"); }) ==
        dir + "/old_abi.so: built for plugin ABI version 1, but this LinearNexus uses ABI version " +
            std::to_string(LINEARNEXUS_PLUGIN_ABI_VERSION) +
            "; rebuild the "
            "plugin against this LinearNexus");
  auto torch = error_of([&] { host.load_file(dir + "/other_torch.so"); });
  CHECK_CONTAINS(torch, "LibTorch 0.0.1");
  CHECK_CONTAINS(torch, LINEARNEXUS_TORCH_VERSION);
  CHECK_CONTAINS(error_of([&] { host.load_file(dir + "/no_entry.so"); }), "not a LinearNexus plugin");
  // A registration that throws is reported; the host and the other plugins carry on.
  CHECK_CONTAINS(error_of([&] { host.load_file(dir + "/throws.so"); }), "failed to register");
  CHECK(host.registry().find(PluginKind::Block, "attention") != nullptr);
}

TEST_CASE("two plugins registering the same block: an error naming both files, the first one kept", "[plugins]") {
  PluginHost host;  // has loaded the real attention.so
  const std::string dir = LINEARNEXUS_TEST_PLUGIN_DIR;
  auto msg = error_of([&] { host.load_file(dir + "/duplicate.so"); });
  CHECK_CONTAINS(msg, "block 'attention' is registered by both");
  CHECK_CONTAINS(msg, "lib/linearnexus/plugins/attention.so");
  CHECK_CONTAINS(msg, "tests/plugins/duplicate.so");
  CHECK(host.registry().get(PluginKind::Block, "attention").origin.plugin_name == "attention");
  // Two files that are the same plugin (name) in two versions: the second is refused, naming the first.
  host.load_file(dir + "/good_v1/good_identity.so");
  auto again = error_of([&] { host.load_file(dir + "/good_v2/good_identity.so"); });
  CHECK_CONTAINS(again, "good_v2/good_identity.so");
  CHECK_CONTAINS(again, "already loaded from");
  CHECK_CONTAINS(again, "good_v1/good_identity.so");
  CHECK(host.registry().get(PluginKind::Block, "test_identity").origin.plugin_version == "1.0.0");
}

TEST_CASE("a folder with broken plugins: each one reported, the host survives, the good one loads", "[plugins]") {
  TempDir t;
  const std::string dir = LINEARNEXUS_TEST_PLUGIN_DIR;
  // Sorted load order: bad_abi, good_identity, throws, zz_other_torch: good plugins before and after the
  // broken ones.
  fs::copy_file(dir + "/bad_abi.so", t / "bad_abi.so");
  fs::copy_file(dir + "/good_v1/good_identity.so", t / "good_identity.so");
  fs::copy_file(dir + "/throws.so", t / "throws.so");
  fs::copy_file(dir + "/other_torch.so", t / "zz_other_torch.so");
  PluginHost host;
  host.load_dir(t.path.string());
  REQUIRE(host.problems().size() == 3);
  CHECK_CONTAINS(host.problems()[0].message, "ABI version 999");
  CHECK_CONTAINS(host.problems()[1].message,
                 "throws.so: plugin 'throws' failed to register: this test plugin always fails");
  CHECK_CONTAINS(host.problems()[2].message, "LibTorch 0.0.1");
  CHECK(host.registry().find(PluginKind::Block, "test_identity") != nullptr);
  CHECK(host.registry().find(PluginKind::Block, "attention") != nullptr);
  for (const auto& p : host.plugins()) CHECK(p.name != "throws");
}

TEST_CASE("a file in a plugin folder that is not a plugin is recorded, not fatal", "[plugins]") {
  TempDir t;
  write_text(t / "notes.so", "this is not a shared library");
  PluginHost host;
  host.load_dir(t.path.string());
  REQUIRE(host.problems().size() == 1);
  CHECK_CONTAINS(host.problems()[0].message, "notes.so");
  CHECK_CONTAINS(host.problems()[0].message, "not a loadable plugin");
}

TEST_CASE("a plugin's library stays loaded while something it made is alive", "[plugins]") {
  std::shared_ptr<Block> block;
  ModelDims dims{32, 1, 10, 16, 0.0};
  {
    PluginHost host;
    const auto& r = host.registry().get(PluginKind::Block, "attention");
    block = host.registry().make_block("attention", dims, params_from_defaults(r.schema, "attention"), 0);
  }  // the host and its registry are gone
  CHECK(library_mapped("attention.so"));
  torch::NoGradGuard g;
  auto y = block->forward(torch::randn({1, 4, 32}), LayerState{}, ForwardContext{}).y;
  CHECK(y.sizes() == at::IntArrayRef({1, 4, 32}));
}

// ---- schedule, clipping -----------------------------------------------------------------------

TEST_CASE("warmup + cosine / linear / constant schedule values", "[schedule]") {
  CHECK(lr_multiplier(0, 10, 110, "cosine", 0.1) == Approx(0.1));
  CHECK(lr_multiplier(4, 10, 110, "cosine", 0.1) == Approx(0.5));
  CHECK(lr_multiplier(10, 10, 110, "cosine", 0.1) == Approx(1.0));
  CHECK(lr_multiplier(60, 10, 110, "cosine", 0.1) == Approx(0.1 + 0.9 * 0.5));
  CHECK(lr_multiplier(110, 10, 110, "cosine", 0.1) == Approx(0.1));
  CHECK(lr_multiplier(60, 10, 110, "linear", 0.0) == Approx(0.5));
  CHECK(lr_multiplier(100, 10, 110, "constant", 0.0) == Approx(1.0));
}

TEST_CASE("global gradient clipping scales to the max norm", "[schedule]") {
  auto a = torch::zeros({2}, torch::requires_grad()), b = torch::zeros({1}, torch::requires_grad());
  a.mutable_grad() = torch::tensor({3.0f, 0.0f});
  b.mutable_grad() = torch::tensor({4.0f});
  std::vector<NamedParameter> ps{{"a", a, {}}, {"b", b, {}}};
  CHECK(clip_grad_norm(ps, 1.0).item<double>() == Approx(5.0));
  CHECK(a.grad()[0].item<double>() == Approx(0.6).epsilon(1e-5));
  CHECK(b.grad()[0].item<double>() == Approx(0.8).epsilon(1e-5));
}

// ---- checkpoints ------------------------------------------------------------------------------

TEST_CASE("safetensors round trip is bit-exact, with metadata", "[checkpoint]") {
  TempDir t;
  TensorMap in = {{"f32", torch::randn({3, 5})},
                  {"bf16", torch::randn({7}).to(at::kBFloat16)},
                  {"i64", torch::randint(0, 1000, {4, 2}, at::kLong)},
                  {"u8", torch::randint(0, 255, {9}, at::kByte)},
                  {"scalar", torch::full({}, 42, at::kLong)}};
  save_safetensors(t / "a.safetensors", in, {{"step", "12"}, {"config", "name: x\n"}});
  CHECK_FALSE(fs::exists(t / "a.safetensors.tmp"));
  auto out = load_safetensors(t / "a.safetensors");
  REQUIRE(out.tensors.size() == in.size());
  for (const auto& [k, v] : in) {
    CHECK(out.tensors.at(k).scalar_type() == v.scalar_type());
    CHECK(at::equal(out.tensors.at(k), v));
  }
  CHECK(out.metadata.at("step") == "12");
  CHECK(out.metadata.at("config") == "name: x\n");
}

TEST_CASE("a corrupt or truncated checkpoint is refused by name", "[checkpoint]") {
  TempDir t;
  save_safetensors(t / "a.safetensors", {{"w", torch::randn({64, 64})}}, {});
  std::string bytes = read_text(t / "a.safetensors");
  write_text(t / "cut.safetensors", bytes.substr(0, bytes.size() / 2));
  CHECK_CONTAINS(error_of([&] { load_safetensors(t / "cut.safetensors"); }), "cut.safetensors");
  CHECK_CONTAINS(error_of([&] { load_safetensors(t / "cut.safetensors"); }), "corrupt");
  write_text(t / "junk.safetensors", "\xff\xff\xff\xff\xff\xff\xff\x7fjunk");
  CHECK_CONTAINS(error_of([&] { load_safetensors(t / "junk.safetensors"); }), "corrupt");
}

TEST_CASE("loading a checkpoint of another model config names the tensor and both shapes", "[checkpoint]") {
  PluginHost host;
  Experiment a = parse(kTinyExperiment, host);
  Experiment b = parse(kTinyExperiment, host, {"model.hidden_size=48"});
  LMModel ma(a.model_config(20), host.registry()), mb(b.model_config(20), host.registry());
  auto msg = error_of([&] { load_model_tensors(mb, model_tensors(ma), "a.safetensors"); });
  CHECK_CONTAINS(msg, "[20, 32]");
  CHECK_CONTAINS(msg, "[20, 48]");
  CHECK_CONTAINS(msg, "model.wte.weight");
}

TEST_CASE("the checkpoint folder keeps the last N plus latest", "[checkpoint]") {
  TempDir t;
  PluginHost host;
  Experiment e = parse(kTinyExperiment, host);
  LMModel model(e.model_config(20), host.registry());
  auto tok = make_char_tokenizer("abc");
  CheckpointManager m(t.path.string(), 2);
  for (int s = 1; s <= 4; ++s) {
    RunCheckpoint ck(model, host.registry(), e.resolved_yaml, *tok, s * 10);
    m.save(ck);
  }
  CHECK_FALSE(fs::exists(t / "step_00000010.safetensors"));
  CHECK_FALSE(fs::exists(t / "step_00000020.safetensors"));
  CHECK(fs::exists(t / "step_00000030.safetensors"));
  CHECK(load_safetensors(*m.latest()).metadata.at("step") == "40");
}

// ---- tokenizer and data -----------------------------------------------------------------------

TEST_CASE("the character tokenizer round-trips and saves itself", "[data]") {
  auto tok = make_char_tokenizer("hello world\n");
  CHECK(tok->vocab_size() == 9);
  auto ids = tok->encode("low hello");
  CHECK(tok->decode(ids) == "low hello");
  auto again = tokenizer_from_json(tok->to_json());
  CHECK(again->encode("low hello") == ids);
  CHECK_CONTAINS(error_of([&] { tok->encode("z"); }), "'z'");
}

TEST_CASE("batches are a pure function of (seed, step, micro-step) and targets are shifted inputs", "[data]") {
  std::vector<int64_t> toks(1000);
  for (int i = 0; i < 1000; ++i) toks[i] = i;
  auto ds = make_memory_dataset(toks, "counting");
  auto a = get_batch(*ds, 4, 8, 1, 5, 0), b = get_batch(*ds, 4, 8, 1, 5, 0), c = get_batch(*ds, 4, 8, 1, 6, 0);
  CHECK(at::equal(a.x, b.x));
  CHECK_FALSE(at::equal(a.x, c.x));
  CHECK(at::equal(a.y, a.x + 1));
}

TEST_CASE("data errors: missing file, empty file, too short for seq_len", "[data]") {
  TempDir t;
  auto data = [&](const std::string& path, int64_t seq_len) {
    PluginHost host;
    Experiment e = parse(kTinyExperiment, host, {"data.path=" + path, "data.seq_len=" + std::to_string(seq_len)});
    return load_data(e.data, "");
  };
  CHECK_CONTAINS(error_of([&] { data(t / "nope.txt", 8); }), "does not exist");
  write_text(t / "empty.txt", "");
  CHECK_CONTAINS(error_of([&] { data(t / "empty.txt", 8); }), "is empty");
  write_text(t / "short.txt", "just a few words of text here, not many");
  CHECK_CONTAINS(error_of([&] { data(t / "short.txt", 64); }), "at least seq_len + 1 = 65");
}
