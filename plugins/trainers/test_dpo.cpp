// The dpo trainer (issue 31): its loss against hand-computed values and autograd, and a run that
// learns a preference from pairs it never saw (held-out pairs' reward accuracy), starting exactly at
// ln 2 (policy == reference) and resuming to the same losses.
#include <cmath>
#include <random>

#include "catch.h"
#include "dpo_loss.h"
#include "linearnexus/host/run_checkpoint.h"
#include "test_util.h"

using namespace linearnexus;
using namespace lntest;

TEST_CASE("dpo_loss: sigmoid, label smoothing and ipo against hand-computed values and gradients", "[dpo]") {
  auto t = [](std::vector<float> v) { return at::tensor(v, at::kFloat); };
  auto logp_c = t({-3.f, -2.f}).requires_grad_(), logp_r = t({-5.f, -2.f});
  const auto ref_c = t({-4.f, -2.f}), ref_r = t({-4.f, -2.f}), n_c = t({2.f, 3.f}), n_r = t({4.f, 3.f});
  // Pair 0: h = (-3 + 4) - (-5 + 4) = 2; pair 1: h = 0 (policy == reference).
  auto d = dpo_loss(logp_c, logp_r, ref_c, ref_r, n_c, n_r, 0.5, "sigmoid", 0.0);
  CHECK(d.loss[0].item<double>() == Approx(std::log1p(std::exp(-1.0))).epsilon(1e-6));  // -log sigmoid(0.5 * 2)
  CHECK(d.loss[1].item<double>() == Approx(std::log(2.0)).epsilon(1e-6));
  CHECK(d.reward_chosen[0].item<double>() == Approx(0.5));
  CHECK(d.reward_rejected[0].item<double>() == Approx(-0.5));
  d.loss.sum().backward();
  // d/d logp_c of -log sigmoid(beta h) = -beta sigmoid(-beta h).
  CHECK(logp_c.grad()[0].item<double>() == Approx(-0.5 / (1.0 + std::exp(1.0))).epsilon(1e-6));
  CHECK(logp_c.grad()[1].item<double>() == Approx(-0.25).epsilon(1e-6));

  auto s = dpo_loss(logp_c, logp_r, ref_c, ref_r, n_c, n_r, 0.5, "sigmoid", 0.1);
  CHECK(s.loss[0].item<double>() ==
        Approx(0.9 * std::log1p(std::exp(-1.0)) + 0.1 * std::log1p(std::exp(1.0))).epsilon(1e-6));
  // ipo: h = 1/2 - (-1)/4 = 0.75 per token; (h - 1/(2 beta))^2 = (0.75 - 1)^2.
  auto i = dpo_loss(logp_c, logp_r, ref_c, ref_r, n_c, n_r, 0.5, "ipo", 0.0);
  CHECK(i.loss[0].item<double>() == Approx(0.0625).epsilon(1e-6));
  CHECK(i.loss[1].item<double>() == Approx(1.0).epsilon(1e-6));
  CHECK_CONTAINS(error_of([&] { dpo_loss(logp_c, logp_r, ref_c, ref_r, n_c, n_r, 0.5, "hinge", 0.0); }),
                 "sigmoid or ipo");
}

namespace {
// Pairs whose preference is a rule to learn, not examples to memorise: the chosen answer repeats the
// word and says "yes", the rejected one says "no". Held-out pairs have words never trained on.
std::string preference_rows(int n, bool chosen_only) {
  const char* a[] = {"ka", "lo", "mi", "nu", "pe", "ra", "so", "ti"};
  const char* b[] = {"ban", "cor", "dil", "fen", "gum", "hob", "jat", "kip"};
  std::string rows;
  for (int i = 0; i < n; ++i) {
    const std::string w = std::string(a[i % 8]) + b[(i / 8 + i) % 8];
    if (chosen_only)
      rows += R"({"prompt": "Q: )" + w + R"(\nA:", "completion": " )" + w +
              R"( yes"})"
              "\n";
    else
      rows += R"({"prompt": "Q: )" + w + R"(\nA:", "chosen": " )" + w + R"( yes", "rejected": " )" + w +
              R"( no"})"
              "\n";
  }
  return rows;
}
const std::string kTokenizer = std::string(LINEARNEXUS_SOURCE_DIR) + "/tests/fixtures/hf_tokenizers/smollm";
const std::string kModel =
    "model: {hidden_size: 32, n_layer: 2, max_seq_len: 32, block_pattern: [attention], blocks: {attention: {n_head: 2}}}\n"
    "optimizer: {name: adamw, lr: 0.003}\nschedule: {warmup_steps: 5}\n";
}  // namespace

TEST_CASE("dpo from an SFT run: starts at ln 2, learns the preference on held-out pairs, resumes exactly",
          "[dpo][e2e]") {
  TempDir t;
  write_text(t / "sft.jsonl", preference_rows(64, true));
  write_text(t / "pref.jsonl", preference_rows(64, false));
  const std::string data =
      "data: {path: '%', format: #, seq_len: 24, val_fraction: 0.25, tokenizer: '" + kTokenizer + "'}\n";
  auto with_data = [&](const std::string& file, const std::string& format) {
    std::string d = data;
    d.replace(d.find('%'), 1, t / file);
    d.replace(d.find('#'), 1, format);
    return d + kModel;
  };
  train_experiment(
      with_data("sft.jsonl", "prompt_completion") +
          "trainer: {name: sft, max_steps: 40, batch_size: 8, log_every: 10, eval_every: 40, eval_batches: 2}\n",
      {"trainer.out_dir=" + (t / "sft")});
  const std::string dpo =
      with_data("pref.jsonl", "preference") +
      "trainer: {name: dpo, max_steps: 40, batch_size: 8, beta: 0.5, log_every: 1, eval_every: 20, eval_batches: 2}\n";
  const std::vector<std::string> from_sft = {"trainer.init_from=" + (t / "sft"), "optimizer.lr=0.001"};
  auto with = [&](std::vector<std::string> a) {
    a.insert(a.end(), from_sft.begin(), from_sft.end());
    return a;
  };
  train_experiment(dpo, with({"trainer.out_dir=" + (t / "full")}));
  auto m = read_metrics(t / "full");
  // Step 1's loss is computed before any update: policy == reference, so every pair's loss is ln 2.
  CHECK(m[1]["loss"].get<double>() == Approx(std::log(2.0)).epsilon(1e-6));
  CHECK(m[1]["reward_margin"].get<double>() == Approx(0.0).margin(1e-6));
  INFO("step 40: " << m[40].dump());
  CHECK(m[40]["reward_accuracy"].get<double>() >= 0.9);
  CHECK(m[40]["val_reward_accuracy"].get<double>() >= 0.9);  // words never trained on
  CHECK(m[40]["val_loss"].get<double>() < std::log(2.0) - 0.2);
  CHECK(m[40]["reward_margin"].get<double>() > 0.5);
  CHECK(m[40]["logp_rejected"].get<double>() < m[1]["logp_rejected"].get<double>());

  // Stopped half way and resumed: the same losses step by step (the reference is reloaded from init_from).
  train_experiment(dpo, with({"trainer.out_dir=" + (t / "split"), "trainer.stop_after=20"}));
  train_experiment(dpo, with({"trainer.out_dir=" + (t / "split"), "trainer.resume=auto"}));
  auto s = read_metrics(t / "split");
  REQUIRE(s.size() == 41);  // steps 0 (the evaluation before training) to 40
  for (int64_t step = 1; step <= 40; ++step) {
    INFO("step " << step);
    CHECK(s[step]["loss"].get<double>() == m[step]["loss"].get<double>());
  }
}

namespace {
// "a+b=" with the right sum chosen and a near miss rejected, one digit each (the issue's task).
std::string arithmetic_rows(int n, uint64_t seed, bool chosen_only) {
  std::mt19937_64 rng(seed);
  std::string rows;
  for (int i = 0; i < n; ++i) {
    const int a = static_cast<int>(rng() % 10), b = static_cast<int>(rng() % 10), c = a + b;
    const int deltas[] = {-2, -1, 1, 2};
    int wrong = c + deltas[rng() % 4];
    if (wrong < 0) wrong = c + 1;
    const std::string prompt = std::to_string(a) + "+" + std::to_string(b) + "=";
    rows += R"({"prompt": ")" + prompt +
            (chosen_only ? R"(", "completion": ")" + std::to_string(c)
                         : R"(", "chosen": ")" + std::to_string(c) + R"(", "rejected": ")" + std::to_string(wrong)) +
            "\"}\n";
  }
  return rows;
}
// Greedy answers to every "a+b=" (a, b < 10) that equal the sum: exact match by sampling.
double exact_match(const std::string& run_dir) {
  LoadedModel m = load_model_from_checkpoint(run_dir, build_plugins());
  SamplingParams greedy;
  greedy.temperature = 0;
  greedy.max_new_tokens = 3;
  greedy.eos_id = m.tokenizer->eos_id();
  int right = 0;
  for (int a = 0; a < 10; ++a)
    for (int b = 0; b < 10; ++b) {
      auto out = generate(*m.model, m.tokenizer->encode(std::to_string(a) + "+" + std::to_string(b) + "="), greedy);
      right += m.tokenizer->decode(out) == std::to_string(a + b) + "<|im_end|>";
    }
  return right / 100.0;
}
}  // namespace

TEST_CASE(
    "dpo after a short SFT on arithmetic: held-out preference accuracy ~50% -> >= 90%, exact match by sampling up",
    "[dpo][e2e]") {
  TempDir t;
  write_text(t / "sft.jsonl", arithmetic_rows(400, 1, true));
  write_text(t / "pref.jsonl", arithmetic_rows(500, 2, false));
  const std::string model =
      "model: {hidden_size: 64, n_layer: 2, max_seq_len: 16, block_pattern: [attention], blocks: {attention: {n_head: 4}}}\n"
      "optimizer: {name: adamw, lr: 0.003}\nschedule: {warmup_steps: 5}\n";
  auto data = [&](const std::string& file, const std::string& format) {
    return "data: {path: '" + (t / file) + "', format: " + format + ", seq_len: 8, val_fraction: 0.2, tokenizer: '" +
           kTokenizer + "'}\n" + model;
  };
  // A short SFT: the answer format, and sums only partly learnt.
  train_experiment(
      data("sft.jsonl", "prompt_completion") +
          "trainer: {name: sft, max_steps: 40, batch_size: 32, log_every: 20, eval_every: 40, eval_batches: 2}\n",
      {"trainer.out_dir=" + (t / "sft")});
  train_experiment(
      data("pref.jsonl", "preference") +
          "trainer: {name: dpo, max_steps: 200, batch_size: 32, beta: 0.5, rpo_alpha: 1.0, log_every: 50, eval_every: 50, "
          "eval_batches: 3}\n",
      {"trainer.out_dir=" + (t / "dpo"), "trainer.init_from=" + (t / "sft")});
  auto m = read_metrics(t / "dpo");
  // preference_accuracy: how often the policy finds the right sum likelier than the near miss.
  const double before = m[0]["val_preference_accuracy"].get<double>();
  const double after = m.rbegin()->second["val_preference_accuracy"].get<double>();
  const double em_sft = exact_match(t / "sft"), em_dpo = exact_match(t / "dpo");
  INFO("held-out preference accuracy " << before << " -> " << after << "; exact match " << em_sft << " -> " << em_dpo);
  CHECK(before == Approx(0.5).margin(0.15));                // the short SFT knows the format, not yet the sums
  CHECK(m[0]["val_reward_accuracy"].get<double>() == 0.0);  // policy == reference: every implicit reward is 0
  CHECK(after >= 0.9);
  CHECK(m.rbegin()->second["val_reward_accuracy"].get<double>() >= 0.9);
  CHECK(em_dpo >= em_sft + 0.3);
}
