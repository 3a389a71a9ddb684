// RL: batched generation, the policy-gradient pieces on hand-made examples, the tasks, and the
// SFT -> GRPO / PPO demonstrations on arithmetic (held-out exact match must rise).
#include <cmath>
#include <map>

#include "catch.h"
#include "linearnexus/host/run_checkpoint.h"
#include "linearnexus/generate.h"
#include "linearnexus/model.h"
#include "linearnexus/host/plugin_host.h"
#include "rl.h"
#include "linearnexus/host/session.h"
#include "linearnexus/task.h"
#include "test_util.h"

using namespace linearnexus;
using namespace lntest;

namespace {

constexpr int64_t kVocab = 20;

// A random model of one block kind whose logits are far apart (embeddings ~N(0, 1) instead of 0.02),
// so greedy choices are not near-ties that rounding could flip.
std::shared_ptr<LMModel> random_model(PluginHost& host, const std::string& pattern) {
  Experiment e = parse(R"(
data: {path: "builtin:arithmetic"}
model: {hidden_size: 32, n_layer: 2, max_seq_len: 48, blocks: {attention: {n_head: 4}, mamba: {d_state: 8}}}
)",
                       host, {"model.block_pattern=" + pattern});
  torch::manual_seed(3);
  auto m = std::make_shared<LMModel>(e.model_config(kVocab), host.registry());
  torch::NoGradGuard g;
  for (auto& kv : m->named_parameters())
    if (kv.key() == "wte.weight") kv.value().mul_(50.0);
  m->eval();
  return m;
}

std::vector<int64_t> random_prompt(int64_t len, int64_t seed) {
  std::vector<int64_t> p;
  for (int64_t i = 0; i < len; ++i) p.push_back((seed * 7 + i * 13 + i * i) % kVocab);
  return p;
}

}  // namespace

// ---- batched generation -----------------------------------------------------------------------

TEST_CASE("batched left-padded greedy generation gives each prompt's one-by-one tokens (attention, mamba, mla)",
          "[rl][generate]") {
  PluginHost host;
  for (const std::string pattern : {"[attention]", "[mamba]", "[mla]", "[mamba, attention]"}) {
    INFO("block_pattern " << pattern);
    auto m = random_model(host, pattern);
    std::vector<std::vector<int64_t>> prompts{random_prompt(3, 1), random_prompt(9, 2), random_prompt(1, 3),
                                              random_prompt(6, 4)};
    SamplingParams greedy;
    greedy.temperature = 0;
    greedy.max_new_tokens = 12;
    GeneratedBatch b = generate_batch(*m, prompts, greedy, /*num_return_sequences=*/2);
    REQUIRE(b.completions.size() == 8);
    CHECK(b.tokens.sizes() == b.mask.sizes());
    for (size_t i = 0; i < prompts.size(); ++i) {
      const auto alone = generate(*m, prompts[i], greedy);
      CHECK(alone.size() == 12);
      CHECK(b.completions[2 * i] == alone);
      CHECK(b.completions[2 * i + 1] == alone);  // greedy: both samples of a group agree
    }
    // The log-probs are those of the drawn tokens: <= 0 inside the mask, 0 outside it.
    CHECK((b.logprobs.masked_select(b.mask) <= 0).all().item<bool>());
    CHECK((b.logprobs.masked_select(b.mask.logical_not()) == 0).all().item<bool>());
  }
}

TEST_CASE("batched sampling stops each row at its stop sequence and masks what follows", "[rl][generate]") {
  PluginHost host;
  auto m = random_model(host, "[attention]");
  SamplingParams sp;
  sp.temperature = 100;  // near uniform over the 20 tokens: stops come soon
  sp.max_new_tokens = 20;
  sp.seed = 11;
  sp.stop_sequences = {{4}, {7, 8}};
  GeneratedBatch b = generate_batch(*m, {random_prompt(4, 1), random_prompt(2, 2)}, sp, 8);
  int64_t stopped = 0;
  for (size_t r = 0; r < b.completions.size(); ++r) {
    const auto& c = b.completions[r];
    INFO("row " << r);
    CHECK(b.mask[r].sum().item<int64_t>() == static_cast<int64_t>(c.size()));
    bool ends = (c.back() == 4) || (c.size() >= 2 && c[c.size() - 2] == 7 && c.back() == 8);
    CHECK(b.stopped[r] == ends);
    CHECK((b.stopped[r] || c.size() == 20));
    // No earlier stop inside the completion.
    for (size_t j = 0; j + 1 < c.size(); ++j) CHECK(c[j] != 4);
    stopped += b.stopped[r];
  }
  CHECK(stopped > 0);
  // Same seed, same samples.
  CHECK(generate_batch(*m, {random_prompt(4, 1), random_prompt(2, 2)}, sp, 8).completions == b.completions);
}

TEST_CASE("the trainers' log-probs of a sampled rollout are the sampler's (attention, mamba, mla, padded prompts)",
          "[rl][generate]") {
  // The ratio pi / pi_old and the KL are only right if re-scoring the packed rollout reproduces
  // what the left-padded, cached sampler drew the tokens with.
  PluginHost host;
  for (const std::string pattern : {"[attention]", "[mamba]", "[mla]", "[mamba, attention]"}) {
    INFO("block_pattern " << pattern);
    auto m = random_model(host, pattern);
    {
      torch::NoGradGuard g;  // soften the logits so samples differ and log-probs are not all ~0
      for (auto& kv : m->named_parameters())
        if (kv.key() == "wte.weight") kv.value().div_(50.0);
    }
    std::vector<std::vector<int64_t>> prompts{random_prompt(3, 1), random_prompt(9, 2), random_prompt(1, 3)};
    SamplingParams sp;
    sp.temperature = 0.7;
    sp.max_new_tokens = 10;
    sp.seed = 5;
    sp.stop_sequences = {{4}};
    GeneratedBatch b = generate_batch(*m, prompts, sp, 3);
    PackedRollout packed = pack_rollout(prompts, 3, b.tokens, b.mask);
    torch::NoGradGuard g;
    PolicyOutput out = policy_forward(*m, packed, sp.temperature);
    auto diff = (out.logp - b.logprobs).masked_select(b.mask).abs().max().item<double>();
    CHECK(diff < 1e-4);
    CHECK(b.logprobs.masked_select(b.mask).mean().item<double>() < -0.05);
  }
}

// ---- policy-gradient math ---------------------------------------------------------------------

TEST_CASE("group advantages on a hand-made example", "[rl]") {
  auto r = at::tensor({1.0f, 0.0f, 0.0f, 0.0f, 1.0f, 1.0f, 1.0f, 1.0f, 2.0f, 0.0f, 1.0f, 1.0f});
  auto a = group_advantages(r, 4, true, 0.0);
  // Group 1: mean 0.25, unbiased std 0.5. Group 2: no spread, advantage 0. Group 3: mean 1, std sqrt(2/3).
  const double s3 = std::sqrt(2.0 / 3.0);
  std::vector<double> want{1.5, -0.5, -0.5, -0.5, 0, 0, 0, 0, 1 / s3, -1 / s3, 0, 0};
  for (int i = 0; i < 12; ++i) CHECK(a[i].item<double>() == Approx(want[i]).margin(1e-6));
  auto centred = group_advantages(r, 4, false);
  CHECK(centred[0].item<double>() == Approx(0.75));
  CHECK(centred[8].item<double>() == Approx(1.0));
}

TEST_CASE("the clipped objective has no gradient outside the clip range on the side it clips", "[rl]") {
  const double eps = 0.2;
  // ratio = exp(logp - old): 1.5 (above 1 + eps), 0.5 (below 1 - eps), 1.1 (inside).
  auto grad_of = [&](double ratio, double adv) {
    auto logp = at::full({1, 1}, std::log(ratio), at::kDouble).set_requires_grad(true);
    auto old = at::zeros({1, 1}, at::kDouble);
    auto cl = clipped_policy_loss(logp, old, at::full({1, 1}, adv, at::kDouble), eps);
    cl.loss.sum().backward();
    return std::make_pair(logp.grad().item<double>(), cl.clipped.item<bool>());
  };
  // Positive advantage: clipped above 1 + eps (no gradient), not below 1 - eps.
  CHECK(grad_of(1.5, 1.0).first == 0.0);
  CHECK(grad_of(1.5, 1.0).second);
  CHECK(grad_of(0.5, 1.0).first == Approx(-0.5));  // d(-ratio A)/dlogp = -ratio A
  // Negative advantage: clipped below 1 - eps, not above 1 + eps.
  CHECK(grad_of(0.5, -1.0).first == 0.0);
  CHECK(grad_of(0.5, -1.0).second);
  CHECK(grad_of(1.5, -1.0).first == Approx(1.5));
  // Inside the range: the plain policy gradient.
  CHECK(grad_of(1.1, 2.0).first == Approx(-2.2));
  CHECK_FALSE(grad_of(1.1, 2.0).second);
}

TEST_CASE("the k3 KL estimate is >= 0, and exactly 0 when policy == reference", "[rl]") {
  torch::manual_seed(0);
  auto logp = at::log_softmax(at::randn({4, 6, 10}) * 3, -1);
  auto ref = at::log_softmax(at::randn({4, 6, 10}) * 3, -1);
  CHECK((k3_kl(logp, ref) >= 0).all().item<bool>());
  CHECK((k3_kl(logp, ref) > 0).any().item<bool>());
  CHECK((k3_kl(logp, logp) == 0).all().item<bool>());
}

TEST_CASE("GAE equals a hand-computed example", "[rl]") {
  const double g = 0.9, l = 0.8;
  // Row 0: three tokens, reward 1 at the end. Row 1: two real tokens (reward 2 at its end), one pad.
  auto rewards = at::tensor({0.0, 0.0, 1.0, 0.0, 2.0, 5.0}, at::kDouble).view({2, 3});
  auto values = at::tensor({0.5, 0.6, 0.7, 0.1, 0.2, 9.0}, at::kDouble).view({2, 3});
  auto mask = at::tensor({1, 1, 1, 1, 1, 0}, at::kLong).to(at::kBool).view({2, 3});
  GAE r = compute_gae(rewards, values, mask, g, l);
  // Row 0: deltas d2 = 1 - 0.7 = 0.3, d1 = 0 + 0.9*0.7 - 0.6 = 0.03, d0 = 0.9*0.6 - 0.5 = 0.04.
  const double a2 = 0.3, a1 = 0.03 + g * l * a2, a0 = 0.04 + g * l * a1;
  // Row 1: d1 = 2 - 0.2 = 1.8 (no value past the end), d0 = 0.9*0.2 - 0.1 = 0.08.
  const double b1 = 1.8, b0 = 0.08 + g * l * b1;
  std::vector<double> want{a0, a1, a2, b0, b1, 0};
  for (int i = 0; i < 6; ++i) CHECK(r.advantages.view({-1})[i].item<double>() == Approx(want[i]).margin(1e-12));
  CHECK(r.returns[0][0].item<double>() == Approx(a0 + 0.5));
  CHECK(r.returns[1][2].item<double>() == 0.0);
}

TEST_CASE("prompt and padding tokens carry no loss: only completion targets get a gradient", "[rl]") {
  // Two prompts (lengths 3 and 1), two samples each; completions of 2, 4, 0 and 1 real tokens.
  std::vector<std::vector<int64_t>> prompts{{5, 6, 7}, {9}};
  auto comp = at::tensor({1, 2, 0, 0, 3, 4, 5, 6, 0, 0, 0, 0, 8, 0, 0, 0}, at::kLong).view({4, 4});
  auto mask = at::tensor({1, 1, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 1, 0, 0, 0}, at::kLong).to(at::kBool).view({4, 4});
  PackedRollout p = pack_rollout(prompts, 2, comp, mask);
  // Row 1 = prompt 0 + 4 tokens: 7 tokens, 6 inputs.
  CHECK(p.input.size(1) == 6);
  CHECK(p.input[1].equal(at::tensor({5, 6, 7, 3, 4, 5}, at::kLong)));
  CHECK(p.target[1].equal(at::tensor({6, 7, 3, 4, 5, 6}, at::kLong)));
  // The completion layout reads the targets back as the completions.
  CHECK(to_completion_layout(p.target, p).masked_select(mask).equal(comp.masked_select(mask)));
  for (const char* norm : {"token", "sequence"}) {
    auto token_logp = at::randn({4, p.input.size(1)}, at::kDouble).set_requires_grad(true);
    auto logp = to_completion_layout(token_logp, p);
    reduce_loss(-logp * 1.7, p.mask, norm).backward();
    auto has_grad = token_logp.grad() != 0;
    auto want = at::zeros({4, p.input.size(1)}, at::kBool);
    want[0].narrow(0, 2, 2).fill_(true);  // prompt 3 tokens: targets at columns 2..3
    want[1].narrow(0, 2, 4).fill_(true);
    want[3].narrow(0, 0, 1).fill_(true);  // prompt 1 token: column 0
    INFO(norm);
    CHECK(has_grad.equal(want));
  }
}

// ---- tasks --------------------------------------------------------------------------------------

TEST_CASE("arithmetic and reverse tasks: fixed held-out sets never drawn for training, exact rewards", "[rl][task]") {
  PluginHost host;
  Experiment e = parse(
      "data: {path: task}\ntask: {name: arithmetic, max_digits: 2, operators: [\"+\", \"*\"], format_reward: 0.1}\n",
      host);
  auto task = host.registry().make_task(e.task_name, e.task);
  const auto& eval = task->eval_set();
  REQUIRE(eval.size() == 200);
  CHECK(host.registry().make_task(e.task_name, e.task)->eval_set()[17].prompt == eval[17].prompt);
  std::set<std::string> held;
  for (const auto& x : eval) held.insert(x.prompt);
  CHECK(held.size() == 200);
  for (int64_t i = 0; i < 2000; ++i) CHECK_FALSE(held.count(task->train_example(1, i).prompt));
  CHECK(task->train_example(1, 5).prompt == task->train_example(1, 5).prompt);
  TaskExample ex{"47+38=", "85"};
  CHECK(task->reward(ex, "85", true) == 1.0);
  CHECK(task->reward(ex, "85", false) == 0.0);  // never ended: not an answer
  CHECK(task->reward(ex, "84", true) == Approx(0.1));
  CHECK(task->reward(ex, "8+", true) == 0.0);
  CHECK(task->correct(ex, "85", true));

  Experiment r =
      parse("data: {path: task}\ntask: {name: reverse, min_len: 3, max_len: 3, alphabet: ab, eval_size: 4}\n", host);
  auto rev = host.registry().make_task(r.task_name, r.task);
  CHECK(rev->eval_set().size() == 4);
  auto x = rev->train_example(0, 0);
  CHECK(x.prompt.size() == 4);
  CHECK(std::string(x.prompt.rbegin() + 1, x.prompt.rend()) == x.answer);
  // 8 distinct strings exist: a held-out set of 200 cannot be made.
  Experiment too_many =
      parse("data: {path: task}\ntask: {name: reverse, min_len: 3, max_len: 3, alphabet: ab}\n", host);
  CHECK_CONTAINS(error_of([&] { host.registry().make_task("reverse", too_many.task); }), "eval_size");
}

// ---- trainers ---------------------------------------------------------------------------------

namespace {

std::string config_text(const std::string& name) { return read_text(LINEARNEXUS_SOURCE_DIR "/configs/" + name); }

// A tiny SFT model on arithmetic, for the checks that need a starting checkpoint but no skill.
void tiny_sft(const std::string& out_dir) {
  train_experiment(config_text("sft_arithmetic.yaml"),
                   {"trainer.out_dir=" + out_dir, "trainer.max_steps=20", "trainer.log_every=10",
                    "model.hidden_size=32", "model.n_layer=1", "trainer.eval_batches=1"});
}

}  // namespace

TEST_CASE("grpo and ppo resume exactly: 2 + 2 steps log what 4 steps log (policy, value head, optimizers)",
          "[rl][training]") {
  TempDir t;
  tiny_sft(t / "sft");
  for (const std::string name : {"grpo", "ppo"}) {
    INFO(name);
    const std::vector<std::string> o{"trainer.init_from=" + (t / "sft"),
                                     "model.hidden_size=32",
                                     "model.n_layer=1",
                                     "trainer.max_steps=4",
                                     "trainer.log_every=1",
                                     "trainer.eval_every=0",
                                     "trainer.prompts_per_step=4",
                                     "task.eval_size=20"};
    auto with_dir = [&](const std::string& d, std::vector<std::string> extra) {
      extra.insert(extra.begin(), o.begin(), o.end());
      extra.push_back("trainer.out_dir=" + d);
      return extra;
    };
    const std::string cfg = config_text(name + "_arithmetic.yaml");
    train_experiment(cfg, with_dir(t / (name + "_full"), {}));
    train_experiment(cfg, with_dir(t / (name + "_split"), {"trainer.stop_after=2"}));
    train_experiment(cfg, with_dir(t / (name + "_split"), {"trainer.resume=auto"}));
    auto full = read_metrics(t / (name + "_full")), split = read_metrics(t / (name + "_split"));
    REQUIRE(full.size() == 5);  // step 0 (eval_accuracy) + 4 steps
    REQUIRE(split.size() == 5);
    for (int64_t step = 1; step <= 4; ++step) {
      INFO("step " << step);
      for (const char* k : {"reward_mean", "kl", "entropy", "response_len", "grad_norm"})
        CHECK(split[step][k].get<double>() == full[step][k].get<double>());
      // The rollout's wall time is logged too (a timing: not equal across runs, only present).
      CHECK(full[step]["rollout_ms"].get<double>() > 0);
    }
    CHECK(split[4]["eval_accuracy"].get<double>() == full[4]["eval_accuracy"].get<double>());
    if (name == "ppo") {
      CHECK(split[4]["value_loss"].get<double>() == full[4]["value_loss"].get<double>());
      CHECK(load_safetensors(t / "ppo_full/latest.safetensors").tensors.count("extra.value.head.weight"));
    }
  }
}

// Sophia's curvature pass is part of the run's optimizer_step, so every trainer gets it: under the RL
// trainers too its Hessian estimate is updated (it used to run on a zero Hessian there, silently).
TEST_CASE("sophia under grpo and ppo: the curvature estimate runs (curvature_updates, a non-zero hessian)",
          "[rl][training]") {
  TempDir t;
  tiny_sft(t / "sft");
  for (const std::string name : {"grpo", "ppo"}) {
    INFO(name);
    train_experiment(
        config_text(name + "_arithmetic.yaml"),
        {"trainer.init_from=" + (t / "sft"), "model.hidden_size=32", "model.n_layer=1", "trainer.max_steps=3",
         "trainer.log_every=1", "trainer.eval_every=0", "trainer.prompts_per_step=4", "task.eval_size=20",
         "optimizer.name=sophia", "optimizer.k=2", "trainer.out_dir=" + (t / name)});
    const auto ck = load_safetensors(t / (name + "/latest.safetensors")).tensors;
    // Steps 0 and 2 of 3 (k = 2), once per step however many updates a step makes.
    CHECK(ck.at("optim.curvature_updates").item<int64_t>() == 2);
    double hessian = 0;
    for (const auto& [k, v] : ck)
      if (k.rfind("optim.", 0) == 0 && k.size() > 8 && k.compare(k.size() - 8, 8, ".hessian") == 0)
        hessian += v.sum().item<double>();
    CHECK(hessian > 0);
  }
}

TEST_CASE("rl trainers: a missing task section or starting checkpoint is one clear error", "[rl][cli]") {
  TempDir t;
  write_text(t / "no_task.yaml",
             "data: {path: builtin:arithmetic, seq_len: 16}\n"
             "model: {hidden_size: 16, n_layer: 1, max_seq_len: 32}\n"
             "trainer: {name: grpo, max_steps: 1, out_dir: " +
                 (t / "a") + "}\n");
  auto r = run_cli("run " + (t / "no_task.yaml"));
  INFO(r.err);
  CHECK(r.code == 1);
  CHECK_CONTAINS(r.err, "needs a task section");
  write_text(t / "no_init.yaml",
             "task: {name: arithmetic}\ndata: {path: task, seq_len: 16}\n"
             "model: {hidden_size: 16, n_layer: 1, max_seq_len: 32}\n"
             "trainer: {name: ppo, max_steps: 1, out_dir: " +
                 (t / "b") + "}\n");
  r = run_cli("run " + (t / "no_init.yaml"));
  CHECK(r.code == 1);
  CHECK_CONTAINS(r.err, "trainer.init_from");
  write_text(t / "bad_task.yaml", "task: {name: arithmetic, operators: [\"/\"]}\ndata: {path: task}\n");
  r = run_cli("run " + (t / "bad_task.yaml"));
  CHECK(r.code == 1);
  CHECK_CONTAINS(r.err, "task.operators");
  r = run_cli("validate " + (t / "bad_task.yaml") + " --set task.name=arithmetc");
  CHECK(r.code == 1);
  CHECK_CONTAINS(r.err, "arithmetic");
}

// The issue's demonstration, with the shipped configs as they are (seed 1337): SFT stops part way
// through learning to carry, then GRPO and PPO each start from it. CTest runs it on its own with 2
// threads (tests/CMakeLists.txt says why); by hand:
//   LINEARNEXUS_NUM_THREADS=2 build/bin/test_rl "[rl-e2e]"
TEST_CASE("SFT -> GRPO and SFT -> PPO on arithmetic raise held-out exact match by >= 10 points", "[rl][.rl-e2e]") {
  TempDir t;
  train_experiment(config_text("sft_arithmetic.yaml"), {"trainer.out_dir=" + (t / "sft")});
  for (const std::string name : {"grpo", "ppo"}) {
    train_experiment(config_text(name + "_arithmetic.yaml"),
                     {"trainer.out_dir=" + (t / name), "trainer.init_from=" + (t / "sft")});
    auto m = read_metrics(t / name);
    const double before = m.begin()->second["eval_accuracy"].get<double>();
    const double after = m.rbegin()->second["eval_accuracy"].get<double>();
    WARN(name << ": held-out exact match " << before << " after SFT -> " << after);
    CHECK(m.begin()->first == 0);
    // The SFT model is imperfect on purpose, so RL has room to improve.
    CHECK(before > 0.1);
    CHECK(before < 0.7);
    CHECK(after >= before + 0.10);
  }
}
