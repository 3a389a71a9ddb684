// trainer.activation_checkpointing: the same gradients and the same run as without it (dropout on,
// so the recomputation must replay the forward's random masks), exact resume, and one clear error
// for a bad value. The data-parallel case is in test_distributed.cpp.
#include "catch.h"
#include "linearnexus/model.h"
#include "linearnexus/host/plugin_host.h"
#include "linearnexus/host/session.h"
#include "test_util.h"

using namespace linearnexus;
using namespace lntest;

namespace {

const char* kExperiment = R"(
name: checkpointing-test
seed: 3
data: {path: "builtin:arithmetic", seq_len: 32}
model: {hidden_size: 32, n_layer: 4, max_seq_len: 64, dropout: 0.1, block_pattern: [attention, mamba], blocks: {attention: {n_head: 4}, mamba: {chunk_size: 8}}}
optimizer: {name: adamw, lr: 3e-3}
schedule: {warmup_steps: 2}
trainer: {name: sft, max_steps: 12, batch_size: 4, log_every: 1, eval_every: 12, eval_batches: 2, save_every: 1000}
)";

// Loss and every parameter's gradient after one training forward/backward with checkpointing
// every `every` blocks (0: none), from the same weights and seed; plus the next number the CPU
// generator gives (checkpointing must leave it where the plain run leaves it).
struct Pass {
  double loss, next_random;
  std::map<std::string, at::Tensor> grads;
};
Pass one_pass(int64_t every) {
  PluginHost host;
  Experiment e = parse(kExperiment, host);
  torch::manual_seed(1);
  LMModel model(e.model_config(20), host.registry());
  model.train();
  model.set_activation_checkpointing(every);
  auto x = torch::randint(20, {3, 16}, torch::kLong), y = torch::randint(20, {3, 16}, torch::kLong);
  torch::manual_seed(2);
  auto loss = model.next_token_loss(x, y);
  (loss * 1.5).backward();
  Pass p{loss.item<double>(), torch::rand({1}).item<double>(), {}};
  for (const auto& kv : model.named_parameters()) p.grads[kv.key()] = kv.value().grad().clone();
  return p;
}

}  // namespace

TEST_CASE("activation checkpointing gives exactly the gradients of the plain backward (dropout on)",
          "[training][checkpointing]") {
  const Pass plain = one_pass(0);
  for (int64_t every : {1, 2, 3}) {
    INFO("every " << every << " blocks");
    const Pass ck = one_pass(every);
    CHECK(ck.loss == plain.loss);
    CHECK(ck.next_random == plain.next_random);
    REQUIRE(ck.grads.size() == plain.grads.size());
    for (const auto& [name, g] : plain.grads) {
      INFO(name);
      CHECK(torch::equal(ck.grads.at(name), g));
    }
  }
}

TEST_CASE("a checkpointed run logs the losses of a plain one and resumes exactly (6 + 6 == 12)",
          "[training][checkpointing]") {
  TempDir t;
  train_experiment(kExperiment, {"trainer.out_dir=" + (t / "plain")});
  train_experiment(kExperiment, {"trainer.out_dir=" + (t / "full"), "trainer.activation_checkpointing=blocks"});
  train_experiment(kExperiment,
                   {"trainer.out_dir=" + (t / "split"), "trainer.activation_checkpointing=2", "trainer.stop_after=6"});
  train_experiment(kExperiment,
                   {"trainer.out_dir=" + (t / "split"), "trainer.activation_checkpointing=2", "trainer.resume=auto"});
  auto plain = read_metrics(t / "plain"), full = read_metrics(t / "full"), split = read_metrics(t / "split");
  REQUIRE(full.size() == 13);  // step 0 (val_loss) and 12 steps
  REQUIRE(split.size() == 13);
  for (int64_t step = 1; step <= 12; ++step) {
    INFO("step " << step);
    CHECK(full[step]["loss"].get<double>() == plain[step]["loss"].get<double>());
    CHECK(split[step]["loss"].get<double>() == plain[step]["loss"].get<double>());
  }
  CHECK(split[12]["val_loss"].get<double>() == plain[12]["val_loss"].get<double>());
}

TEST_CASE("a bad trainer.activation_checkpointing is one error naming the key", "[training][checkpointing][cli]") {
  for (const char* bad : {"some", "0", "-1", "2.5"}) {
    INFO(bad);
    const std::string msg =
        error_of([&] { train_experiment(kExperiment, {std::string("trainer.activation_checkpointing=") + bad}); });
    CHECK_CONTAINS(msg, "trainer.activation_checkpointing must be none, blocks or a positive number N");
  }
}
