// Post-training data (issue 31): data.format chat / prompt_completion / preference (host/examples.h).
// The masks are checked by decoding exactly the tokens that carry the loss; a padded batch's loss is
// checked against each example's loss computed alone; every bad file is one Error naming file:line.
#include <ATen/ATen.h>

#include "linearnexus/host/data.h"
#include "linearnexus/host/examples.h"
#include "linearnexus/loss.h"
#include "test_util.h"

using namespace linearnexus;
using namespace lntest;

namespace {

// A small byte-level BPE with a ChatML template (<|im_start|> / <|im_end|>) and no download.
const std::string kTokenizer = std::string(LINEARNEXUS_SOURCE_DIR) + "/tests/fixtures/hf_tokenizers/smollm";

DataSettings settings_for(const std::string& path, const std::string& format, int64_t seq_len = 64) {
  DataSettings d;
  d.path = path;
  d.tokenizer = kTokenizer;
  d.format = format;
  d.seq_len = seq_len;
  d.val_fraction = 0.25;
  return d;
}

// The text of the tokens of `s` that carry the loss (train[i]), in order.
std::string trained_text(const Tokenizer& tok, const Sequence& s) {
  std::vector<int64_t> ids;
  for (size_t i = 1; i < s.ids.size(); ++i)
    if (s.train[i]) ids.push_back(s.ids[i]);
  return tok.decode(ids);
}

}  // namespace

TEST_CASE("prompt_completion examples put the loss on the completion and the end-of-text token only", "[examples]") {
  TempDir t;
  write_text(t / "pc.jsonl", R"({"prompt": "The capital of France is", "completion": " Paris."}
{"prompt": "2+2=", "completion": "4"}

{"prompt": "Say hi:", "completion": " hi"}
{"prompt": "x", "completion": "y"}
)");
  auto tok = load_tokenizer(kTokenizer);
  auto splits = load_examples(settings_for(t / "pc.jsonl", "prompt_completion"), "", *tok);
  REQUIRE(splits.train->size() == 3);  // the blank line is skipped; 1 of 4 held out
  REQUIRE(splits.val->size() == 1);
  const Sequence& s = splits.train->at(0).at(0);
  CHECK(tok->decode(s.ids) == "The capital of France is Paris.<|im_end|>");
  CHECK(trained_text(*tok, s) == " Paris.<|im_end|>");
  CHECK(trained_text(*tok, splits.train->at(1).at(0)) == "4<|im_end|>");
  // data.train_on_prompt: every token after the first.
  auto all = settings_for(t / "pc.jsonl", "prompt_completion");
  all.train_on_prompt = true;
  const auto every = load_examples(all, "", *tok);
  const Sequence& e = every.train->at(0).at(0);
  CHECK(trained_text(*tok, e) == tok->decode(std::vector<int64_t>(e.ids.begin() + 1, e.ids.end())));
}

TEST_CASE("chat examples are rendered with the tokenizer's template and train on the assistant turns", "[examples]") {
  TempDir t;
  write_text(
      t / "chat.jsonl",
      R"({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}, )"
      R"({"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Bye."}]})"
      "\n"
      R"({"prompt": [{"role": "user", "content": "2+2?"}], "completion": [{"role": "assistant", "content": "4"}]})"
      "\n");
  auto tok = load_tokenizer(kTokenizer);
  // The second row is conversational prompt_completion, not chat: read alone in that format below.
  write_text(t / "one.jsonl", read_text(t / "chat.jsonl").substr(0, read_text(t / "chat.jsonl").find('\n') + 1));
  write_text(t / "two.jsonl", read_text(t / "one.jsonl") + read_text(t / "one.jsonl"));
  auto chat = load_examples(settings_for(t / "two.jsonl", "chat"), "", *tok);
  const Sequence& s = chat.train->at(0).at(0);
  // The rendered text is the template's (ChatML), and only the assistant turns carry the loss,
  // their end-of-turn text included: what the model must learn to write, and to stop.
  CHECK(
      tok->decode(s.ids) ==
      "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
      "<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\nBye.<|im_end|>\n");
  CHECK(trained_text(*tok, s) == "Hello!<|im_end|>\nBye.<|im_end|>\n");
  CHECK(render_chat(*tok, read_text(t / "one.jsonl"), true, "x").text ==
        tok->decode(s.ids) + "<|im_start|>assistant\n");

  const std::string conv = read_text(t / "chat.jsonl").substr(read_text(t / "chat.jsonl").find('\n') + 1);
  write_text(t / "conv.jsonl", conv + conv);
  auto pc = load_examples(settings_for(t / "conv.jsonl", "prompt_completion"), "", *tok);
  const Sequence& c = pc.train->at(0).at(0);
  CHECK(tok->decode(c.ids) == "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n");
  CHECK(trained_text(*tok, c) == "4<|im_end|>\n");
}

TEST_CASE("preference examples are chosen / rejected row pairs sharing the prompt", "[examples]") {
  TempDir t;
  std::string rows;
  for (int i = 0; i < 8; ++i)
    rows += R"({"prompt": "Q)" + std::to_string(i) +
            R"(:", "chosen": " yes", "rejected": " no way"})"
            "\n";
  write_text(t / "pref.jsonl", rows);
  auto tok = load_tokenizer(kTokenizer);
  auto set = load_examples(settings_for(t / "pref.jsonl", "preference", 16), "", *tok).train;
  REQUIRE(set->sequences_per_example() == 2);
  BatchSpec spec{3, 16, 7, Sampling::Random};
  Batch b = get_example_batch(*set, spec, 5, 0);
  REQUIRE(b.x.sizes() == at::IntArrayRef({6, 16}));
  for (int64_t i = 0; i < 3; ++i) {
    auto chosen = b.x[2 * i], rejected = b.x[2 * i + 1];
    CHECK(chosen[0].item<int64_t>() == rejected[0].item<int64_t>());  // one prompt
    // y: the completion's tokens (and <|im_end|>), -1 elsewhere.
    std::vector<int64_t> yc;
    for (int64_t j = 0; j < 16; ++j)
      if (b.y[2 * i][j].item<int64_t>() >= 0) yc.push_back(b.y[2 * i][j].item<int64_t>());
    CHECK(tok->decode(yc) == " yes<|im_end|>");
  }
  // A pure function of (seed, step, micro, rank): the same batch again, another one at another step.
  CHECK(at::equal(get_example_batch(*set, spec, 5, 0).x, b.x));
}

TEST_CASE("a padded batch's loss is the mean over its examples' trained tokens, each computed alone", "[examples]") {
  TempDir t;
  std::string rows;
  const char* words[] = {"apple", "banana split", "cherry", "a much longer answer than the others", "e", "fig tree"};
  for (int i = 0; i < 6; ++i)
    rows += std::string(R"({"prompt": "Word )") + std::to_string(i) + R"(:", "completion": " )" + words[i] + "\"}\n";
  write_text(t / "pc.jsonl", rows);
  auto tok = load_tokenizer(kTokenizer);
  auto set = load_examples(settings_for(t / "pc.jsonl", "prompt_completion", 24), "", *tok).train;
  PluginHost host;
  Experiment e = parse(
      "data: {path: x}\nmodel: {hidden_size: 32, n_layer: 2, max_seq_len: 32, "
      "block_pattern: [attention, mamba], blocks: {attention: {n_head: 2}}}\n",
      host);
  torch::manual_seed(0);
  LMModel model(e.model_config(tok->vocab_size()), host.registry());
  Batch b = get_example_batch_in_order(*set, 4, 24, 0);
  torch::NoGradGuard g;
  const double batch_loss = model.next_token_loss(b.x, b.y).item<double>();
  // Each example alone, unpadded: the sum of its token losses, over all the batch's trained tokens.
  double sum = 0, count = 0;
  for (int64_t i = 0; i < 4; ++i) {
    const Sequence& s = set->at(i).at(0);
    const int64_t n = static_cast<int64_t>(s.ids.size());
    auto ids = at::tensor(s.ids, at::kLong).unsqueeze(0);
    auto y = ids.narrow(1, 1, n - 1).clone();
    for (int64_t j = 1; j < n; ++j)
      if (!s.train[j]) y[0][j - 1] = -1;
    sum += -token_log_probs(model.forward(ids.narrow(1, 0, n - 1)), y).sum().item<double>();
    count += static_cast<double>(y.ne(-1).sum().item<int64_t>());
  }
  CHECK(batch_loss == Approx(sum / count).epsilon(1e-5));
}

TEST_CASE("bad example files: one Error naming the file, the line and what to do", "[examples][hardening]") {
  TempDir t;
  auto tok = load_tokenizer(kTokenizer);
  auto error_for = [&](const std::string& text, const std::string& format) {
    write_text(t / "bad.jsonl", text);
    return error_of([&] { load_examples(settings_for(t / "bad.jsonl", format), "", *tok); });
  };
  const std::string ok = R"({"prompt": "a", "completion": "b"})"
                         "\n";
  CHECK_CONTAINS(error_for(ok + ok + "{\"prompt\": \"a\", \n", "prompt_completion"), "bad.jsonl:3: not valid JSON");
  CHECK_CONTAINS(error_for(ok + R"({"prompt": "a"})"
                                "\n",
                           "prompt_completion"),
                 "bad.jsonl:2: 'completion' must be a string");
  CHECK_CONTAINS(error_for(ok + "[1, 2]\n", "prompt_completion"), "bad.jsonl:2: each line must be a JSON object");
  CHECK_CONTAINS(error_for(ok + ok, "chat"), "bad.jsonl:1: no 'messages'");
  CHECK_CONTAINS(error_for(R"({"messages": [{"role": "user", "content": "hi"}]})"
                           "\n" +
                               ok,
                           "chat"),
                 "bad.jsonl:1: no assistant message");
  CHECK_CONTAINS(error_for(R"({"messages": [{"content": "hi"}]})"
                           "\n",
                           "chat"),
                 "with a string 'role'");
  CHECK_CONTAINS(error_for(ok + R"({"prompt": "a", "chosen": "b"})"
                                "\n",
                           "preference"),
                 "bad.jsonl:1: 'chosen' must be a string");
  CHECK_CONTAINS(error_for(ok, "prompt_completion"), "holds 1 example(s)");
  CHECK_CONTAINS(error_for(std::string(100, '[') + std::string(100, ']') + "\n", "chat"),
                 "nested deeper than 64 levels");
  // A tokenizer without a chat template, for a chat file.
  auto gpt2_like = load_tokenizer(std::string(LINEARNEXUS_SOURCE_DIR) + "/tests/fixtures/hf_tokenizers/sp_bpe");
  write_text(t / "c.jsonl", R"({"messages": [{"role": "assistant", "content": "hi"}]})"
                            "\n");
  if (gpt2_like->chat_template().empty())
    CHECK_CONTAINS(error_of([&] { load_examples(settings_for(t / "c.jsonl", "chat"), "", *gpt2_like); }),
                   "has no chat template");
}

TEST_CASE("runner: data.format and the trainers that need it", "[examples][cli]") {
  TempDir t;
  write_text(t / "pc.jsonl", std::string(R"({"prompt": "a", "completion": "b"})"
                                         "\n") +
                                 R"({"prompt": "c", "completion": "d"})"
                                 "\n");
  write_text(t / "pref.jsonl", std::string(R"({"prompt": "a", "chosen": "b", "rejected": "c"})"
                                           "\n") +
                                   R"({"prompt": "c", "chosen": "d", "rejected": "e"})"
                                   "\n");
  const std::string model =
      "model: {hidden_size: 16, n_layer: 1, max_seq_len: 16, block_pattern: [attention], blocks: {attention: {n_head: 2}}}\n";
  auto run_yaml = [&](const std::string& data, const std::string& trainer) {
    write_text(t / "exp.yaml", "data: " + data + "\n" + model + "trainer: " + trainer + "\n");
    return run_cli("run '" + (t / "exp.yaml") + "' --set trainer.out_dir='" + (t / "out") + "'");
  };
  check_one_clean_error(run_yaml("{path: '" + (t / "pc.jsonl") + "', seq_len: 16}", "{name: sft, max_steps: 1}"),
                        "is JSON Lines, but data.format is text");
  check_one_clean_error(
      run_yaml("{path: '" + (t / "pc.jsonl") + "', seq_len: 16, format: chat}", "{name: sft, max_steps: 1}"),
      "data.tokenizer: data.format chat needs a model's tokenizer");
  check_one_clean_error(
      run_yaml("{path: '" + (t / "pref.jsonl") + "', seq_len: 16, format: preference, tokenizer: '" + kTokenizer + "'}",
               "{name: sft, max_steps: 1}"),
      "data.format preference (chosen / rejected pairs) is for trainer 'dpo'");
  check_one_clean_error(run_yaml("{path: '" + (t / "pc.jsonl") +
                                     "', seq_len: 16, format: prompt_completion, tokenizer: '" + kTokenizer + "'}",
                                 "{name: dpo, max_steps: 1}"),
                        "set data.format: preference");
  check_one_clean_error(
      run_yaml("{path: '" + (t / "pref.jsonl") + "', seq_len: 16, format: preference, tokenizer: '" + kTokenizer + "'}",
               "{name: dpo, max_steps: 1}"),
      "set trainer.init_from");
  check_one_clean_error(
      run_yaml("{path: '" + (t / "pc.jsonl") + "', seq_len: 16, format: chats}", "{name: sft, max_steps: 1}"),
      "data.format");
}

namespace {
std::string python() { return fs::exists("/usr/bin/python3") ? "/usr/bin/python3" : "python3"; }
}  // namespace

TEST_CASE("data chat-render prints what python3-jinja2 renders, for every fixture tokenizer's template",
          "[examples][cli][jinja]") {
  TempDir t;
  const std::vector<nlohmann::ordered_json> conversations = {
      nlohmann::ordered_json::parse(R"([{"role": "user", "content": "Hi there"}])"),
      nlohmann::ordered_json::parse(R"([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                                        {"role": "assistant", "content": "4"}, {"role": "user", "content": "and 3+3?"}])"),
      nlohmann::ordered_json::parse(R"([{"role": "user", "content": "caf\u00e9 \"quotes\" \\ and\nnewlines"},
                                        {"role": "assistant", "content": "  spaced  "}])")};
  std::string rows;
  for (const auto& c : conversations) rows += nlohmann::ordered_json{{"messages", c}}.dump() + "\n";
  write_text(t / "rows.jsonl", rows);
  int checked = 0;
  for (const char* name : {"smollm", "qwen2", "llama3"}) {
    const std::string dir = std::string(LINEARNEXUS_SOURCE_DIR) + "/tests/fixtures/hf_tokenizers/" + name;
    auto tok = load_tokenizer(dir);
    for (bool gen : {false, true}) {
      INFO(name << (gen ? " --add-generation-prompt" : ""));
      CliResult r = run_cli("data chat-render --tokenizer '" + dir + "' --input '" + (t / "rows.jsonl") + "'" +
                            (gen ? " --add-generation-prompt" : ""));
      INFO(r.err);
      REQUIRE(r.code == 0);
      // The oracle: the same template and context through transformers' Jinja setup (tests/jinja_oracle.py).
      nlohmann::ordered_json cases = nlohmann::ordered_json::array();
      for (const auto& c : conversations) {
        nlohmann::ordered_json ctx = {
            {"messages", c}, {"add_generation_prompt", gen}, {"tools", nullptr}, {"documents", nullptr}};
        if (tok->bos_id() >= 0) ctx["bos_token"] = tok->decode({tok->bos_id()});
        if (tok->eos_id() >= 0) ctx["eos_token"] = tok->decode({tok->eos_id()});
        cases.push_back({{"template", tok->chat_template()}, {"context", ctx}});
      }
      write_text(t / "cases.json", cases.dump());
      const int rc = std::system((python() + " '" LINEARNEXUS_SOURCE_DIR "/tests/jinja_oracle.py' '" +
                                  (t / "cases.json") + "' > '" + (t / "results.json") + "' 2>/dev/null")
                                     .c_str());
      if (!WIFEXITED(rc) || WEXITSTATUS(rc) != 0) {
        WARN("SKIPPED the oracle comparison: python3 with jinja2 is not available (apt-get install python3-jinja2)");
        return;
      }
      const auto results = nlohmann::json::parse(read_text(t / "results.json"));
      std::istringstream lines(r.out);
      std::string line;
      for (const auto& want : results) {
        REQUIRE(std::getline(lines, line));
        CHECK(nlohmann::json::parse(line).get<std::string>() == want.at("text").get<std::string>());
        ++checked;
      }
    }
  }
  CHECK(checked == 18);
}

TEST_CASE("chat SFT learns the assistant's replies, sample --chat answers in the template and stops at its end",
          "[examples][e2e]") {
  TempDir t;
  // Each user names a colour; the assistant answers with a fixed sentence about it.
  const char* colours[] = {"red", "blue", "green", "black", "white", "pink", "grey", "gold"};
  std::string rows;
  for (int i = 0; i < 64; ++i) {
    const std::string c = colours[i % 8];
    rows += R"({"messages": [{"role": "user", "content": ")" + c + R"("}, {"role": "assistant", "content": "I like )" +
            c +
            R"(."}]})"
            "\n";
  }
  write_text(t / "chat.jsonl", rows);
  train_experiment(
      "data: {path: '" + (t / "chat.jsonl") + "', format: chat, seq_len: 32, val_fraction: 0.125, tokenizer: '" +
          kTokenizer +
          "'}\n"
          "model: {hidden_size: 64, n_layer: 2, max_seq_len: 32, block_pattern: [attention], blocks: {attention: {n_head: 4}}}\n"
          "optimizer: {name: adamw, lr: 0.003}\nschedule: {warmup_steps: 5}\n"
          "trainer: {name: sft, max_steps: 150, batch_size: 16, log_every: 10, eval_every: 10, eval_batches: 1}\n"
          "sample: {prompt: blue, chat: true, temperature: 0, max_tokens: 12}\n",
      {"trainer.out_dir=" + (t / "run")});
  auto m = read_metrics(t / "run");
  INFO("val_loss " << m[10]["val_loss"] << " -> " << m[150]["val_loss"]);
  CHECK(m[150]["val_loss"].get<double>() < 0.3);  // only the replies are scored: nearly all of them predictable
  CHECK(m[150]["val_loss"].get<double>() < m[10]["val_loss"].get<double>() - 1.0);
  CliResult r = run_cli("sample --checkpoint '" + (t / "run") + "'");
  INFO(r.err);
  REQUIRE(r.code == 0);
  CHECK(r.out == "---- sample 1 ----\nuser: blue\nassistant: I like blue.\n");
  r = run_cli("sample --checkpoint '" + (t / "run") + "' --prompt gold --temperature 0");
  CHECK(r.out == "---- sample 1 ----\nuser: gold\nassistant: I like gold.\n");
}
