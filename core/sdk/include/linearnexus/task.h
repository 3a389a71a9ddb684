#pragma once
// The task protocol (the fourth plugin kind): prompts to train on, a fixed held-out set to measure,
// and a reward for a completion. RL trainers (grpo, ppo) draw prompts and score rollouts through
// it; `data.path: task` trains an SFT model on the same task's worked examples, so SFT and RL share
// the task's text and, through the SFT checkpoint, its character vocabulary.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace linearnexus {

struct TaskExample {
  std::string prompt;  // e.g. "47+385="
  std::string answer;  // the exact expected completion, stop string excluded: "432"
};

class Task {
 public:
  virtual ~Task() = default;
  // Training example `index` of the stream drawn with `seed`: a pure function (resumes see the same
  // prompts). Never one of eval_set()'s prompts.
  virtual TaskExample train_example(uint64_t seed, int64_t index) const = 0;
  // The fixed held-out set (same for every run of the same task parameters).
  virtual const std::vector<TaskExample>& eval_set() const = 0;
  // The reward of `completion` (the generated text, cut at the stop string, which is not included);
  // `stopped`: the model ended it with the stop string.
  virtual double reward(const TaskExample& example, const std::string& completion, bool stopped) const = 0;
  // Exact match, for eval_accuracy.
  virtual bool correct(const TaskExample& example, const std::string& completion, bool stopped) const {
    return stopped && completion == example.answer;
  }
  // What ends a completion (and each line of the SFT text).
  virtual std::string stop_string() const { return "\n"; }
  // How many worked examples `data.path: task` trains on (sft_text's n).
  virtual int64_t sft_examples() const { return 20000; }
  // SFT text: n training examples as prompt + answer + stop string.
  std::string sft_text(int64_t n, uint64_t seed) const {
    std::string out;
    for (int64_t i = 0; i < n; ++i) {
      TaskExample e = train_example(seed, i);
      out += e.prompt + e.answer + stop_string();
    }
    return out;
  }
};

}  // namespace linearnexus
