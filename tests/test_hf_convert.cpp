// `convert hf-import / hf-export` and `eval`: tiny random-weight models saved by transformers
// (tests/fixtures/hf, made by make_fixtures.py) import with transformers' logits and greedy
// continuation; export -> import is bit-exact; bad folders give one error naming the file and tensor.
#include <torch/torch.h>

#include "catch.h"
#include "linearnexus/host/run_checkpoint.h"
#include "linearnexus/generate.h"
#include "linearnexus/host/hf_convert.h"
#include "linearnexus/host/lora_convert.h"
#include "linearnexus/host/scoring.h"
#include "linearnexus/host/tokenizers.h"
#include "hf_test_util.h"
#include "test_util.h"

using namespace linearnexus;
using lntest::check_bit_equal;
using lntest::error_of;
using lntest::model_tensors_of;
using lntest::native_run;
using lntest::TempDir;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

// delta_net and gated_deltanet: fla's classes (make_fla_fixtures.py).
const char* kArchitectures[] = {"gpt2", "llama", "qwen2", "mamba", "mamba2", "delta_net", "gated_deltanet"};

std::string fixture(const std::string& arch) { return std::string(LINEARNEXUS_TEST_FIXTURES_DIR) + "/hf/" + arch; }

json expected_of(const std::string& arch) { return json::parse(lntest::read_text(fixture(arch) + "/expected.json")); }

// A copy of a fixture folder to break in a test: t/<arch><suffix>.
std::string copy_fixture(const std::string& arch, const TempDir& t, const std::string& suffix) {
  const std::string dst = t / (arch + suffix);
  fs::create_directories(dst);
  for (const auto& e : fs::directory_iterator(fixture(arch)))
    fs::copy_file(e.path(), fs::path(dst) / e.path().filename());
  return dst;
}

}  // namespace

TEST_CASE("hf-import reproduces transformers' / fla's logits and greedy continuation (every fixture)", "[hf]") {
  PluginHost host;
  for (const std::string arch : kArchitectures) {
    INFO(arch);
    if (!fs::exists(fixture(arch) + "/expected.json")) {
      WARN("SKIPPED: no fixture " << fixture(arch) << " (make it with tests/fixtures/hf/make_fixtures.py)");
      continue;
    }
    TempDir t;
    hf_import(fixture(arch), t / "run", host);
    const json expected = expected_of(arch);
    LoadedModel lm = load_model_from_checkpoint(t / "run", host);
    const auto ids = expected["ids"].get<std::vector<int64_t>>();
    auto logits = lm.model->forward(at::tensor(ids).unsqueeze(0)).squeeze(0);  // [T, V]
    std::vector<std::vector<float>> want = expected["logits"];
    auto ref = at::empty({static_cast<int64_t>(want.size()), static_cast<int64_t>(want[0].size())});
    for (size_t i = 0; i < want.size(); ++i) ref[i].copy_(at::tensor(want[i]));
    const double diff = (logits - ref).abs().max().item<double>();
    INFO("max |logit diff| " << diff);
    CHECK(diff <= 1e-4);
    SamplingParams greedy;
    greedy.temperature = 0;
    greedy.max_new_tokens = static_cast<int64_t>(expected["greedy"].size());
    CHECK(lntest::generate(*lm.model, ids, greedy) == expected["greedy"].get<std::vector<int64_t>>());
    // eval's mean NLL is the fixture's, from transformers' logits.
    const auto lp = at::log_softmax(ref.narrow(0, 0, ref.size(0) - 1), -1)
                        .gather(1, at::tensor(std::vector<int64_t>(ids.begin() + 1, ids.end())).unsqueeze(1));
    CHECK(score_tokens(*lm.model, ids).mean_nll() == Approx(-lp.mean().item<double>()).margin(1e-4));

    // Export gives back the fixture's own tensors, bit for bit; importing that again, our checkpoint.
    hf_export(t / "run", t / "exported", host);
    check_bit_equal(load_safetensors(fixture(arch) + "/model.safetensors").tensors,
                    load_safetensors(t / "exported/model.safetensors").tensors);
    hf_import(t / "exported", t / "again", host);
    check_bit_equal(model_tensors_of(t / "run"), model_tensors_of(t / "again"));
  }
}

TEST_CASE("hf-export -> hf-import is bit-exact for models trained here (each architecture's shape)", "[hf]") {
  PluginHost host;
  TempDir t;
  const std::pair<const char*, const char*> models[] = {
      {"gpt2",
       "{vocab_size: 40, hidden_size: 16, n_layer: 2, max_seq_len: 32, norm: layernorm, positions: learned, "
       "block_pattern: [attention], blocks: {attention: {n_head: 2, rope: false, mlp: gelu, qkv_bias: true, "
       "proj_bias: true, mlp_bias: true}}}"},
      {"llama",
       "{vocab_size: 40, hidden_size: 16, n_layer: 2, max_seq_len: 32, tie_embeddings: false, block_pattern: "
       "[attention], blocks: {attention: {n_head: 4, n_kv_head: 2, rope_base: 20000.0}}}"},
      {"qwen2",
       "{vocab_size: 40, hidden_size: 16, n_layer: 2, max_seq_len: 32, norm_eps: 1.0e-6, block_pattern: "
       "[attention], blocks: {attention: {n_head: 4, n_kv_head: 1, qkv_bias: true}}}"},
      {"mamba",
       "{vocab_size: 40, hidden_size: 16, n_layer: 2, max_seq_len: 32, block_pattern: [mamba], "
       "blocks: {mamba: {d_state: 4, bias: true}}}"},
      {"mamba2",
       "{vocab_size: 40, hidden_size: 16, n_layer: 2, max_seq_len: 32, norm_eps: 1.0e-6, tie_embeddings: false, "
       "block_pattern: [mamba2], blocks: {mamba2: {d_state: 4, head_dim: 8, n_groups: 2}}}"},
  };
  const char* classes[] = {"GPT2LMHeadModel", "LlamaForCausalLM", "Qwen2ForCausalLM", "MambaForCausalLM",
                           "Mamba2ForCausalLM"};
  for (size_t i = 0; i < 5; ++i) {
    const std::string name = models[i].first;
    INFO(name);
    const std::string run = native_run(host, models[i].second, t, name);
    hf_export(run, t / (name + "_hf"), host);
    const json config = json::parse(lntest::read_text(t / (name + "_hf/config.json")));
    CHECK(config["architectures"][0] == classes[i]);
    hf_import(t / (name + "_hf"), t / (name + "_back"), host, {});
    check_bit_equal(model_tensors_of(run), model_tensors_of(t / (name + "_back")));
    // The same model: the same scores (the config round trip kept eps, rope_base, the head's tying...).
    LoadedModel a = load_model_from_checkpoint(run, host), b = load_model_from_checkpoint(t / (name + "_back"), host);
    const std::vector<int64_t> ids = {3, 1, 4, 1, 5, 9, 2, 6, 5, 3};
    CHECK(score_tokens(*a.model, ids).logprobs == score_tokens(*b.model, ids).logprobs);
  }
}

TEST_CASE("hf-import: bad folders get one error naming the file and the tensor or key", "[hf][errors]") {
  PluginHost host;
  if (!fs::exists(fixture("llama") + "/model.safetensors")) {
    WARN("SKIPPED: no fixture " << fixture("llama"));
    return;
  }
  TempDir t;
  auto edit_config = [&](const std::string& dir, const std::function<void(json&)>& edit) {
    json c = json::parse(lntest::read_text(dir + "/config.json"));
    edit(c);
    lntest::write_text(dir + "/config.json", c.dump());
  };
  auto edit_tensors = [&](const std::string& dir, const std::function<void(TensorMap&)>& edit) {
    auto f = load_safetensors(dir + "/model.safetensors");
    edit(f.tensors);
    save_safetensors(dir + "/model.safetensors", f.tensors, f.metadata);
  };
  int n = 0;
  auto import_error = [&](const std::string& dir, const HfImportOptions& o = {}) {
    return error_of([&] { hf_import(dir, t / ("out" + std::to_string(n++)), host, o); });
  };
  auto variant = [&](const std::string& suffix) { return copy_fixture("llama", t, suffix); };
  SECTION("an unsupported architecture is named with config.json") {
    const std::string d = variant("_bert");
    edit_config(d, [](json& c) { c["architectures"] = {"BertForMaskedLM"}; });
    const std::string e = import_error(d);
    CHECK_CONTAINS(e, d + "/config.json: architecture 'BertForMaskedLM' is not supported");
    CHECK_CONTAINS(e, "MambaForCausalLM");
  }
  SECTION("an option we do not implement names its key") {
    const std::string d = variant("_rope");
    edit_config(d, [](json& c) { c["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}}; });
    const std::string e = import_error(d);
    CHECK_CONTAINS(e, "config.json: rope_scaling is");
    CHECK_CONTAINS(e, "scaled variants");
  }
  SECTION("a shape that does not fit config.json names the tensor, its file and both shapes") {
    const std::string d = variant("_shape");
    edit_config(d, [](json& c) { c["intermediate_size"] = 48; });
    const std::string e = import_error(d);
    CHECK_CONTAINS(e, "model.layers.0.mlp.gate_proj.weight' [64, 32] in");
    CHECK_CONTAINS(e, "model.safetensors");
    CHECK_CONTAINS(e, "[48, 32] is expected");
  }
  SECTION("a missing tensor is named") {
    const std::string d = variant("_missing");
    edit_tensors(d, [](TensorMap& m) { m.erase("model.layers.1.self_attn.k_proj.weight"); });
    lntest::write_text(d + "/tokenizer_config.json", "{}");  // copied before the weights fail: removed again
    const std::string out = t / "missing_out";
    CHECK_CONTAINS(error_of([&] { hf_import(d, out, host, HfImportOptions{false}); }),
                   "tensor 'model.layers.1.self_attn.k_proj.weight' is missing");
    CHECK_FALSE(fs::exists(out));  // no half-made run folder
  }
  SECTION("an unknown tensor is named with its file") {
    const std::string d = variant("_unknown");
    edit_tensors(d, [](TensorMap& m) { m["model.layers.0.self_attn.q_norm.weight"] = at::ones({8}); });
    const std::string e = import_error(d);
    CHECK_CONTAINS(
        e, "model.safetensors: tensor 'model.layers.0.self_attn.q_norm.weight' is not part of LlamaForCausalLM");
  }
  SECTION("bf16 weights import as fp32 master weights (widened exactly)") {
    const std::string d = variant("_bf16");
    edit_tensors(d, [](TensorMap& m) {
      for (auto& [k, v] : m) v = v.to(at::kBFloat16);
    });
    hf_import(d, t / "bf16_run", host);
    const auto ours = model_tensors_of(t / "bf16_run");
    const auto hf = load_safetensors(d + "/model.safetensors").tensors;
    CHECK(ours.at("model.wte.weight").scalar_type() == at::kFloat);
    CHECK(ours.at("model.wte.weight").equal(hf.at("model.embed_tokens.weight").to(at::kFloat)));
    CHECK(ours.at("model.blocks.1.mlp.down.weight").equal(hf.at("model.layers.1.mlp.down_proj.weight").to(at::kFloat)));
    const json record = json::parse(lntest::read_text(t / "bf16_run/hf_import.json"));
    CHECK(record["source_dtypes"] == json({"BFloat16"}));
  }
  SECTION("sharded checkpoints import; a missing shard is named with the index") {
    const std::string d = variant("_sharded");
    auto all = load_safetensors(d + "/model.safetensors").tensors;
    fs::remove(d + "/model.safetensors");
    TensorMap first, second;
    json index = {{"metadata", json::object()}, {"weight_map", json::object()}};
    for (const auto& [k, v] : all) {
      const bool one = k.find("layers.1.") == std::string::npos;
      (one ? first : second)[k] = v;
      index["weight_map"][k] = one ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.safetensors";
    }
    save_safetensors(d + "/model-00001-of-00002.safetensors", first, {{"format", "pt"}});
    save_safetensors(d + "/model-00002-of-00002.safetensors", second, {{"format", "pt"}});
    lntest::write_text(d + "/model.safetensors.index.json", index.dump());
    hf_import(d, t / "sharded_run", host);
    hf_import(fixture("llama"), t / "single_run", host);
    check_bit_equal(model_tensors_of(t / "sharded_run"), model_tensors_of(t / "single_run"));
    fs::remove(d + "/model-00002-of-00002.safetensors");
    const std::string e = import_error(d);
    CHECK_CONTAINS(e, "model.safetensors.index.json: shard 'model-00002-of-00002.safetensors' is missing");
  }
  SECTION("a tokenizer this build does not read is an error unless --no-tokenizer; then ids work, text says why") {
    const std::string d = variant("_tok");
    lntest::write_text(d + "/tokenizer.json", R"({"model": {"type": "Unigram", "vocab": []}})");
    lntest::write_text(d + "/tokenizer_config.json", R"({"tokenizer_class": "T5Tokenizer"})");
    const std::string e = import_error(d);
    CHECK_CONTAINS(e, d + ": its tokenizer (tokenizer.json) is not one this build reads");
    CHECK_CONTAINS(e, "--no-tokenizer");
    HfImportOptions weights_only;
    weights_only.tokenizer = false;
    hf_import(d, t / "no_tok", host, weights_only);
    CHECK(fs::exists(t / "no_tok/tokenizer.json"));  // kept as it was, for a build that reads it
    CHECK(lntest::read_text(t / "no_tok/tokenizer.json") == lntest::read_text(d + "/tokenizer.json"));
    const json record = json::parse(lntest::read_text(t / "no_tok/hf_import.json"));
    CHECK(record["architecture"] == "LlamaForCausalLM");
    CHECK(record["tokenizer_files"] == json({"tokenizer.json", "tokenizer_config.json", "generation_config.json"}));
    LoadedModel lm = load_model_from_checkpoint(t / "no_tok", host);
    CHECK(lm.tokenizer->kind() == "ids");
    CHECK_CONTAINS(error_of([&] { lm.tokenizer->encode("hello"); }), "pass token ids (eval --ids)");
  }
  SECTION("the output folder must be new") {
    fs::create_directories(t / "taken");
    lntest::write_text(t / "taken/x", "x");
    CHECK_CONTAINS(error_of([&] { hf_import(fixture("llama"), t / "taken", host); }), "is not empty");
  }
}

TEST_CASE("Mamba2ForCausalLM: in_proj stacks the block's in_proj and dt_proj, config.json's Infinity reads", "[hf]") {
  PluginHost host;
  TempDir t;
  const std::string model =
      "{vocab_size: 40, hidden_size: 16, n_layer: 1, max_seq_len: 32, block_pattern: [mamba2], "
      "blocks: {mamba2: {d_state: 4, head_dim: 8}}";
  const std::string run = native_run(host, model + "}", t, "m2");
  hf_export(run, t / "hf", host);
  const auto ours = model_tensors_of(run);
  const auto theirs = load_safetensors(t / "hf/model.safetensors").tensors;
  // [z, x, B, C] (2 * 32 + 2 * 4 rows) then dt (4 heads) rows: transformers' split of in_proj.
  const at::Tensor& in_proj = theirs.at("backbone.layers.0.mixer.in_proj.weight");
  REQUIRE(in_proj.sizes() == at::IntArrayRef{32 + 40 + 4, 16});
  CHECK(in_proj.narrow(0, 0, 72).equal(ours.at("model.blocks.0.in_proj.weight")));
  CHECK(in_proj.narrow(0, 72, 4).equal(ours.at("model.blocks.0.dt_proj.weight")));
  CHECK(theirs.count("backbone.layers.0.mixer.norm.weight"));

  // Python's json writes transformers' default time_step_limit as [0.0, Infinity]: that reads, and a
  // clamp we do not implement is named.
  std::string config = lntest::read_text(t / "hf/config.json");
  const std::string with_limit = "{\"time_step_limit\": [0.0, Infinity], " + config.substr(config.find('{') + 1);
  lntest::write_text(t / "hf/config.json", with_limit);
  hf_import(t / "hf", t / "back", host, {});
  check_bit_equal(model_tensors_of(run), model_tensors_of(t / "back"));
  lntest::write_text(t / "hf/config.json", "{\"time_step_limit\": [0.0, 0.1], " + config.substr(config.find('{') + 1));
  const std::string e = error_of([&] { hf_import(t / "hf", t / "back2", host, {}); });
  CHECK_CONTAINS(e, t / "hf/config.json: time_step_limit is [0.0,0.1]; only [0.0, Infinity]");
  // A rows-only share of in_proj has no PEFT layer of its own.
  const std::string lora = native_run(host, model + ", lora: {rank: 2}}", t, "m2_lora");
  CHECK_CONTAINS(error_of([&] { peft_export(lora, t / "peft", host); }),
                 "is only some rows of backbone.layers.0.mixer.in_proj.weight");
  CHECK_FALSE(fs::exists(t / "peft"));
}

TEST_CASE("hf-export: a model without a Hugging Face counterpart names the key", "[hf][errors]") {
  PluginHost host;
  TempDir t;
  const std::string run =
      native_run(host,
                 "{vocab_size: 40, hidden_size: 16, n_layer: 2, max_seq_len: 32, block_pattern: [attention], "
                 "blocks: {attention: {n_head: 2, mlp: gelu}}}",
                 t, "gelu_rope");
  const std::string e = error_of([&] { hf_export(run, t / "out", host); });
  CHECK_CONTAINS(e, "none of the Hugging Face architectures of block 'attention'");
  CHECK_CONTAINS(e, "LlamaForCausalLM: model.blocks.attention.mlp is gelu");
  CHECK_CONTAINS(e, "GPT2LMHeadModel: model.positions is not learned");
  const std::string hybrid = native_run(
      host, "{vocab_size: 40, hidden_size: 16, n_layer: 2, max_seq_len: 32, block_pattern: [mamba, attention]}", t,
      "hybrid");
  CHECK_CONTAINS(error_of([&] { hf_export(hybrid, t / "out2", host); }), "model.block_pattern mixes blocks");
  // A block whose registration carries no Hugging Face adapter is named, with its plugin.
  const std::string kda = native_run(
      host, "{vocab_size: 40, hidden_size: 16, n_layer: 2, max_seq_len: 32, block_pattern: [kda]}", t, "kda");
  CHECK_CONTAINS(error_of([&] { hf_export(kda, t / "out3", host); }),
                 "block 'kda' (plugin deltanet) has no Hugging Face adapter");

  // eval --text scores the text in the run's tokenizer; windows restart the context.
  lntest::write_text(t / "text.txt", "the cat sat on the mat.\nthe dog sat too.");
  auto r = lntest::run_cli("eval --checkpoint " + run + " --text " + (t / "text.txt") + " --per-token");
  INFO(r.err);
  REQUIRE(r.code == 0);
  const json out = json::parse(r.out);
  LoadedModel lm = load_model_from_checkpoint(run, host);
  const auto ids = lm.tokenizer->encode(lntest::read_text(t / "text.txt"));
  CHECK(out["ids"].get<std::vector<int64_t>>() == ids);
  const TokenScores full = score_tokens(*lm.model, ids);
  CHECK(out["mean_nll"].get<double>() == Approx(full.mean_nll()).epsilon(1e-12));
  const TokenScores windows = score_tokens(*lm.model, ids, 8);
  REQUIRE(windows.logprobs.size() == ids.size() - 1);
  for (size_t k = 0; k < 8; ++k)
    CHECK(windows.logprobs[k] == Approx(full.logprobs[k]).margin(1e-5));  // the same context
  CHECK(windows.logprobs[8] != Approx(full.logprobs[8]).margin(1e-5));    // the second window starts afresh
}

TEST_CASE("eval and convert on the command line, preset: init_from takes an imported model's shape", "[hf][cli]") {
  if (!fs::exists(fixture("gpt2") + "/expected.json")) {
    WARN("SKIPPED: no fixture " << fixture("gpt2"));
    return;
  }
  TempDir t;
  auto r = lntest::run_cli("convert hf-import " + fixture("gpt2") + " " + (t / "run"));
  INFO(r.err);
  REQUIRE(r.code == 0);
  const json expected = expected_of("gpt2");
  std::string ids;
  for (int64_t id : expected["ids"].get<std::vector<int64_t>>()) ids += std::to_string(id) + " ";
  r = lntest::run_cli("eval --checkpoint " + (t / "run") + " --ids '" + ids + "' --per-token");
  REQUIRE(r.code == 0);
  const json scores = json::parse(r.out);
  CHECK(scores["logprobs"].size() == expected["ids"].size() - 1);
  CHECK(scores["perplexity"].get<double>() == Approx(std::exp(scores["mean_nll"].get<double>())));
  lntest::check_one_clean_error(lntest::run_cli("eval --checkpoint " + (t / "run") + " --ids '1 x'"),
                                "'x' is not a token id");
  lntest::check_one_clean_error(lntest::run_cli("eval --checkpoint " + (t / "run") + " --ids '1 500'"),
                                "token id 500 is outside the model's vocabulary");
  lntest::check_one_clean_error(lntest::run_cli("convert hf-import " + (t / "run") + " " + (t / "x")),
                                "config.json: cannot be read");

  // The shipped configs for imported models, as `validate` checks them (every check run makes: the
  // data files, the tokenizer): from the chat fixture, which has a tokenizer, and real data files.
  r = lntest::run_cli("convert hf-import " + fixture("qwen2_chat") + " " + (t / "chat"));
  REQUIRE(r.code == 0);
  lntest::write_text(t / "text.txt", std::string(4000, 'a') + "\n");
  const std::string fixtures = LINEARNEXUS_TEST_FIXTURES_DIR;
  for (const auto& [config, data] :
       std::vector<std::pair<std::string, std::string>>{{"finetune_hf.yaml", t / "text.txt"},
                                                        {"grpo_hf.yaml", "task"},
                                                        {"chat_sft_hf.yaml", fixtures + "/post_training/chats.jsonl"},
                                                        {"dpo_hf.yaml", fixtures + "/post_training/pairs.jsonl"}}) {
    auto v = lntest::run_cli("validate " + std::string(LINEARNEXUS_SOURCE_DIR) + "/configs/" + config +
                             " --set trainer.init_from=" + (t / "chat") + " --set data.path=" + data +
                             " --set data.seq_len=32 --set trainer.out_dir=" + (t / config));
    INFO(config << ": " << v.err);
    CHECK(v.code == 0);
  }
  // The fine-tuning config fits any imported model: its model section is the checkpoint's.
  PluginHost host;
  Experiment e = load_experiment(std::string(LINEARNEXUS_SOURCE_DIR) + "/configs/finetune_hf.yaml",
                                 {"trainer.init_from=" + (t / "run")}, host);
  LoadedModel lm = load_model_from_checkpoint(t / "run", host);
  CHECK(e.model.learned_positions);
  CHECK(e.model.dims.norm == NormKind::LayerNorm);
  CHECK(e.model.dims.hidden_size == lm.experiment.model.dims.hidden_size);
  CHECK(e.model.block_params.at("attention").get_bool("qkv_bias"));
  CHECK_CONTAINS(e.resolved_yaml, "preset: \"\"");  // resolved: the run's config stands alone
  CHECK_CONTAINS(
      error_of([&] { load_experiment(std::string(LINEARNEXUS_SOURCE_DIR) + "/configs/finetune_hf.yaml", {}, host); }),
      "preset init_from takes the model of trainer.init_from, which is not set");
}

TEST_CASE("a GPT-2 BPE run exported and imported keeps its tokenizer, and SFT starts from it (init_from)", "[hf]") {
  const std::string gpt2 = lntest::shared_data("gpt2");
  if (gpt2.empty()) {
    WARN("SKIPPED: needs ../shared/data/gpt2 (encoder.json + vocab.bpe)");
    return;
  }
  PluginHost host;
  TempDir t;
  auto bpe = load_tokenizer(gpt2);
  const std::string run =
      native_run(host,
                 "{hidden_size: 16, n_layer: 1, max_seq_len: 32, norm: layernorm, positions: learned, "
                 "block_pattern: [attention], blocks: {attention: {n_head: 2, rope: false, mlp: gelu, "
                 "qkv_bias: true, proj_bias: true, mlp_bias: true}}}",
                 t, "bpe", bpe);
  hf_export(run, t / "bpe_hf", host);
  CHECK(lntest::read_text(t / "bpe_hf/vocab.json") == lntest::read_text(gpt2 + "/encoder.json"));
  hf_import(t / "bpe_hf", t / "imported", host);
  LoadedModel lm = load_model_from_checkpoint(t / "imported", host);
  REQUIRE(lm.tokenizer->kind() == "gpt2");
  const std::string text = "First Citizen:\nBefore we proceed any further, hear me speak.\n";
  CHECK(lm.tokenizer->encode(text) == bpe->encode(text));

  std::string corpus;
  for (int i = 0; i < 60; ++i) corpus += text;  // ~1000 tokens: 5% of them still fill a validation window
  lntest::write_text(t / "corpus.txt", corpus);
  lntest::train_experiment(
      lntest::read_text(std::string(LINEARNEXUS_SOURCE_DIR) + "/configs/finetune_hf.yaml"),
      {"trainer.init_from=" + (t / "imported"), "data.path=" + (t / "corpus.txt"), "data.seq_len=16",
       "trainer.max_steps=1", "trainer.batch_size=2", "trainer.grad_accum=1", "trainer.eval_batches=1",
       "trainer.out_dir=" + (t / "ft"), "optimizer.lr=1e-4", "schedule.warmup_steps=0"});
  // One small step from the imported weights (a fresh initialisation would be ~0.2 away).
  const auto before = model_tensors_of(t / "imported"), after = model_tensors_of(t / "ft");
  const double moved = (after.at("model.wte.weight") - before.at("model.wte.weight")).abs().max().item<double>();
  CHECK(moved > 0);
  CHECK(moved < 1e-2);
  CHECK(load_model_from_checkpoint(t / "ft", host).tokenizer->kind() == "gpt2");
}
