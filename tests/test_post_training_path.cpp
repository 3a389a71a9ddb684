// The post-training path of the README ("Post-training"), command by command through the real
// runner, offline on fixtures: a tiny Qwen2 chat model that transformers wrote with its tokenizer
// (tests/fixtures/hf/qwen2_chat, make_chat_fixture.py) is imported, chat-SFT'd with LoRA on a JSON
// Lines file, DPO'd, sampled in chat form, merged and exported; and `hf-import --tokenizer DIR`.
#include <ATen/ATen.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>

#include "linearnexus/host/data.h"
#include "linearnexus/host/run_checkpoint.h"
#include "test_util.h"

using namespace linearnexus;
using namespace lntest;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

const std::string kFixture = std::string(LINEARNEXUS_TEST_FIXTURES_DIR) + "/hf/qwen2_chat";
const std::string kData = std::string(LINEARNEXUS_TEST_FIXTURES_DIR) + "/post_training";
const std::string kConfigs = std::string(LINEARNEXUS_SOURCE_DIR) + "/configs";

json read_json_file(const std::string& path) { return json::parse(read_text(path)); }

at::Tensor logits_of(const std::string& run, const std::vector<int64_t>& ids) {
  LoadedModel lm = load_model_from_checkpoint(run, build_plugins());
  torch::NoGradGuard g;
  return lm.model->forward(at::tensor(ids, at::kLong).unsqueeze(0))[0];
}

// The metric lines of a run that carry `key`, in order.
std::vector<double> metric(const std::string& run, const std::string& key) {
  std::vector<double> out;
  std::ifstream in(run + "/metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    const json j = json::parse(line);
    if (j.contains(key)) out.push_back(j[key].get<double>());
  }
  return out;
}

CliResult must_run(const std::string& args) {
  CliResult r = run_cli(args);
  INFO(args << "\nstdout: " << r.out << "\nstderr: " << r.err);
  REQUIRE(r.code == 0);
  return r;
}

}  // namespace

TEST_CASE("post-training path on fixtures: hf-import, chat SFT with LoRA, DPO, sample --chat, merge-lora, hf-export",
          "[post-training][e2e][cli]") {
  TempDir t;
  const json expected = read_json_file(kFixture + "/expected.json");
  const auto ids = expected["ids"].get<std::vector<int64_t>>();

  // 1. Import: transformers' own logits for a rendered chat.
  must_run("convert hf-import '" + kFixture + "' '" + (t / "base") + "'");
  const at::Tensor base_logits = logits_of(t / "base", ids);
  std::vector<float> flat;
  for (const auto& row : expected["logits"])
    for (const auto& v : row) flat.push_back(v.get<float>());
  const at::Tensor hf_logits = at::tensor(flat).view({static_cast<int64_t>(ids.size()), -1});
  CHECK((base_logits - hf_logits).abs().max().item<double>() < 1e-4);
  // The chat template renders the fixture's conversation as transformers' apply_chat_template did.
  write_text(t / "one.jsonl", R"({"messages": [{"role": "user", "content": "What is 2 + 3?"}]})"
                              "\n");
  const CliResult render = must_run("data chat-render --tokenizer '" + (t / "base") + "' --input '" +
                                    (t / "one.jsonl") + "' --add-generation-prompt");
  CHECK(json::parse(render.out) == expected["text"]);

  // 2. Chat SFT with LoRA (the shipped config, as the README runs it).
  const std::string common =
      " --no-sample --set device=cpu --set data.seq_len=48 --set trainer.batch_size=8 --set trainer.grad_accum=1"
      " --set schedule.warmup_steps=0 --set trainer.eval_batches=2 --set trainer.log_every=5";
  must_run(
      "run '" + kConfigs + "/chat_sft_hf.yaml' --set trainer.init_from='" + (t / "base") + "' --set data.path='" +
      kData +
      "/chats.jsonl' --set model.lora.rank=8 --set model.lora.alpha=16 --set optimizer.lr=0.01 --set trainer.max_steps=40" +
      " --set trainer.eval_every=20 --set trainer.out_dir='" + (t / "sft") + "'" + common);
  const auto sft_loss = metric(t / "sft", "loss"), sft_val = metric(t / "sft", "val_loss");
  REQUIRE(sft_loss.size() >= 2);
  REQUIRE(sft_val.size() >= 2);               // step 0, 20 and 40
  CHECK(sft_loss.back() < sft_loss.front());  // the assistant turns are learnt, held-out ones too
  CHECK(sft_val.back() < sft_val.front());

  // 3. DPO from the LoRA run: the adapters continue; the reference is the SFT run, frozen.
  must_run(
      "run '" + kConfigs + "/dpo_hf.yaml' --set trainer.init_from='" + (t / "sft") + "' --set data.path='" + kData +
      "/pairs.jsonl' --set optimizer.lr=0.003 --set trainer.max_steps=20 --set trainer.eval_every=10 --set trainer.out_dir='" +
      (t / "dpo") + "'" + common);
  const auto margins = metric(t / "dpo", "reward_margin");
  REQUIRE(!margins.empty());
  CHECK(margins.back() > 0);  // the chosen answers pulled ahead of the rejected ones
  CHECK(!metric(t / "dpo", "val_preference_accuracy").empty());
  CHECK(read_text(t / "dpo/config.yaml").find("lora:") != std::string::npos);
  // Both LoRA runs name the imported base their adapters sit on: its path and SHA-256.
  const json base = json::parse(RunCheckpoint::read(t / "sft", true).lora_base());
  CHECK(base["path"] == fs::absolute(t / "base/latest.safetensors").lexically_normal().string());
  CHECK(base["sha256"] == sha256_file(t / "base/latest.safetensors"));
  CHECK(RunCheckpoint::read(t / "dpo", true).lora_base() == base.dump());

  // 4. Sample in chat form: the prompt rendered as a user turn, the reply stops at <|im_end|>.
  const CliResult sample =
      must_run("sample --checkpoint '" + (t / "dpo") + "' --chat --prompt 'What is 2 + 3?' --max-tokens 12 " +
               "--temperature 0 --device cpu");
  CHECK(!sample.out.empty());

  // 5. Merge: a plain run with the same logits; 6. export: transformers' token ids and files.
  must_run("convert merge-lora '" + (t / "dpo") + "' '" + (t / "merged") + "'");
  CHECK(read_json_file(t / "merged/lora_merge.json")["base"] == base);
  CHECK(at::allclose(logits_of(t / "dpo", ids), logits_of(t / "merged", ids), 1e-5, 1e-5));
  must_run("convert hf-export '" + (t / "merged") + "' '" + (t / "export") + "'");
  const json config = read_json_file(t / "export/config.json");
  const json generation = read_json_file(t / "export/generation_config.json");
  CHECK(config["architectures"] == json({"Qwen2ForCausalLM"}));
  for (const json* j : {&config, &generation}) {
    CHECK((*j)["eos_token_id"] == expected["eos_token_id"]);  // <|im_end|>
    CHECK((*j)["pad_token_id"] == expected["pad_token_id"]);  // <|endoftext|>
    CHECK((*j)["bos_token_id"].is_null());
  }
  CHECK(generation["transformers_version"] == "5.17.0");  // the imported model's own file, ids set
  CHECK(read_text(t / "export/tokenizer.json") == read_text(kFixture + "/tokenizer.json"));
  CHECK(read_text(t / "export/tokenizer_config.json") == read_text(kFixture + "/tokenizer_config.json"));
}

TEST_CASE("hf-import --tokenizer DIR attaches a tokenizer to a model folder without one", "[post-training][hf][cli]") {
  TempDir t;
  fs::create_directories(t / "weights");
  for (const char* f : {"config.json", "model.safetensors", "generation_config.json"})
    fs::copy_file(kFixture + "/" + f, t / (std::string("weights/") + f));

  // Without: ids only, and the warning says how to attach one.
  const CliResult bare = must_run("convert hf-import '" + (t / "weights") + "' '" + (t / "bare") + "'");
  CHECK_CONTAINS(bare.err, "--tokenizer DIR");
  {
    LoadedModel lm = load_model_from_checkpoint(t / "bare", build_plugins());
    CHECK(lm.tokenizer->kind() == "ids");
    CHECK_CONTAINS(error_of([&] { lm.tokenizer->encode("hi"); }), "--tokenizer DIR");
  }
  // With: the tokenizer's files are the run's own, its ids transformers' ids.
  must_run("convert hf-import '" + (t / "weights") + "' '" + (t / "run") + "' --tokenizer '" + kFixture + "'");
  CHECK(read_text(t / "run/tokenizer.json") == read_text(kFixture + "/tokenizer.json"));
  {
    LoadedModel lm = load_model_from_checkpoint(t / "run", build_plugins());
    CHECK(lm.tokenizer->kind() == "hf");
    const json expected = read_json_file(kFixture + "/expected.json");
    CHECK(lm.tokenizer->encode(expected["text"].get<std::string>()) == expected["ids"].get<std::vector<int64_t>>());
    CHECK(lm.tokenizer->eos_id() == expected["eos_token_id"].get<int64_t>());
  }
  // Bad folders: one clean error each, no run folder left.
  check_one_clean_error(
      run_cli("convert hf-import '" + (t / "weights") + "' '" + (t / "x") + "' --tokenizer '" + (t / "nope") + "'"),
      "--tokenizer " + (t / "nope") + ": not a folder");
  fs::create_directories(t / "empty");
  check_one_clean_error(
      run_cli("convert hf-import '" + (t / "weights") + "' '" + (t / "x") + "' --tokenizer '" + (t / "empty") + "'"),
      "the folder has no tokenizer files");
  CHECK(!fs::exists(t / "x"));
}
