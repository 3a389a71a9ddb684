// Built-in tasks with verifiable rewards: `arithmetic` ("47+385=" -> "432") and `reverse`
// ("abcd>" -> "dcba"). Each draws training examples as a pure function of (seed, index), keeps a
// fixed held-out set that training never draws, and rewards 1 for the exact answer (plus an
// optional small reward for a well-formed wrong one).
#include <linearnexus/error.h>
#include <linearnexus/plugin.h>
#include <linearnexus/task.h>

#include <functional>
#include <random>
#include <set>

namespace linearnexus {
namespace {

uint64_t mix(uint64_t x) {  // splitmix64: independent streams from (seed, index)
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// The held-out bookkeeping both tasks share: `draw(rng)` makes one example; the eval set is the
// first eval_size distinct draws of a fixed stream, and training draws skip those prompts.
class GeneratedTask : public Task {
 public:
  using Draw = std::function<TaskExample(std::mt19937_64&)>;
  GeneratedTask(Draw draw, int64_t eval_size, double format_reward, const std::string& where)
      : draw_(std::move(draw)), format_reward_(format_reward) {
    std::mt19937_64 rng(0xe7a1);
    for (int64_t tries = 0; static_cast<int64_t>(eval_.size()) < eval_size; ++tries) {
      if (tries > 100 * eval_size + 1000)
        throw Error(where + ".eval_size (" + std::to_string(eval_size) +
                    ") is more than the task has distinct problems; lower it");
      TaskExample e = draw_(rng);
      if (eval_prompts_.insert(e.prompt).second) eval_.push_back(e);
    }
  }
  TaskExample train_example(uint64_t seed, int64_t index) const override {
    std::mt19937_64 rng(mix(seed ^ mix(static_cast<uint64_t>(index))));
    for (int tries = 0;; ++tries) {
      TaskExample e = draw_(rng);
      if (!eval_prompts_.count(e.prompt) || tries > 1000) return e;
    }
  }
  const std::vector<TaskExample>& eval_set() const override { return eval_; }
  double reward(const TaskExample& ex, const std::string& completion, bool stopped) const override {
    if (correct(ex, completion, stopped)) return 1.0;
    return stopped && well_formed(ex, completion) ? format_reward_ : 0.0;
  }
  virtual bool well_formed(const TaskExample& ex, const std::string& completion) const = 0;

 private:
  Draw draw_;
  double format_reward_;
  std::vector<TaskExample> eval_;
  std::set<std::string> eval_prompts_;
};

// ---- arithmetic --------------------------------------------------------------------------------

class ArithmeticTask : public GeneratedTask {
 public:
  explicit ArithmeticTask(const Params& p)
      : GeneratedTask(make_draw(p), p.get_int("eval_size"), p.get_float("format_reward"), "task") {}
  bool well_formed(const TaskExample&, const std::string& c) const override {
    size_t start = !c.empty() && c[0] == '-';
    return c.size() > start && c.find_first_not_of("0123456789", start) == std::string::npos;
  }

 private:
  static Draw make_draw(const Params& p) {
    const int64_t lo = p.get_int("min_digits"), hi = p.get_int("max_digits");
    if (lo < 1 || hi < lo || hi > 9)
      throw Error("task.min_digits/max_digits must satisfy 1 <= min_digits <= max_digits <= 9 (got " +
                  std::to_string(lo) + ", " + std::to_string(hi) + ")");
    const auto ops = p.get_string_list("operators");
    if (ops.empty()) throw Error("task.operators must name at least one of +, -, *");
    for (const auto& op : ops)
      if (op != "+" && op != "-" && op != "*")
        throw Error("task.operators: '" + op + "' is not an operator; use +, - or *");
    return [lo, hi, ops](std::mt19937_64& rng) {
      auto number = [&] {
        const int64_t digits = lo + static_cast<int64_t>(rng() % static_cast<uint64_t>(hi - lo + 1));
        int64_t limit = 1;
        for (int64_t i = 0; i < digits; ++i) limit *= 10;
        return static_cast<int64_t>(rng() % static_cast<uint64_t>(limit));
      };
      const int64_t a = number(), b = number();
      const std::string op = ops[rng() % ops.size()];
      const int64_t v = op == "+" ? a + b : op == "-" ? a - b : a * b;
      return TaskExample{std::to_string(a) + op + std::to_string(b) + "=", std::to_string(v)};
    };
  }
};

// ---- reverse -----------------------------------------------------------------------------------

class ReverseTask : public GeneratedTask {
 public:
  explicit ReverseTask(const Params& p)
      : GeneratedTask(make_draw(p), p.get_int("eval_size"), p.get_float("format_reward"), "task") {}
  bool well_formed(const TaskExample& ex, const std::string& c) const override { return c.size() == ex.answer.size(); }

 private:
  static Draw make_draw(const Params& p) {
    const int64_t lo = p.get_int("min_len"), hi = p.get_int("max_len");
    const std::string alphabet = p.get_string("alphabet");
    if (lo < 1 || hi < lo) throw Error("task.min_len/max_len must satisfy 1 <= min_len <= max_len");
    if (alphabet.empty() || alphabet.find_first_of(">\n") != std::string::npos)
      throw Error("task.alphabet must be non-empty and hold neither '>' nor a newline");
    return [lo, hi, alphabet](std::mt19937_64& rng) {
      const int64_t n = lo + static_cast<int64_t>(rng() % static_cast<uint64_t>(hi - lo + 1));
      std::string s;
      for (int64_t i = 0; i < n; ++i) s += alphabet[rng() % alphabet.size()];
      return TaskExample{s + ">", std::string(s.rbegin(), s.rend())};
    };
  }
};

void register_tasks(Registry& r) {
  const ParamSpec eval_size{"eval_size", ParamType::Int, "200", "held-out problems (fixed; never drawn for training)"};
  const ParamSpec format{"format_reward", ParamType::Float, "0.0",
                         "reward for a well-formed wrong answer (the exact one gets 1)"};
  const ParamSpec sft{"sft_examples", ParamType::Int, "20000", "worked examples in the text data.path: task trains on"};
  r.add_task("arithmetic", "integer arithmetic: prompt '47+385=', answer '432' then a newline",
             {{"min_digits", ParamType::Int, "1", "fewest digits of an operand"},
              {"max_digits", ParamType::Int, "2", "most digits of an operand"},
              {"operators", ParamType::StringList, "[\"+\"]", "operators drawn from: +, -, *"},
              eval_size,
              format,
              sft},
             [](const Params& p) { return std::make_shared<ArithmeticTask>(p); });
  r.add_task("reverse", "reverse a string: prompt 'abcd>', answer 'dcba' then a newline",
             {{"min_len", ParamType::Int, "2", "shortest string"},
              {"max_len", ParamType::Int, "6", "longest string"},
              {"alphabet", ParamType::String, "abcdefgh", "characters the strings are made of"},
              eval_size,
              format,
              sft},
             [](const Params& p) { return std::make_shared<ReverseTask>(p); });
}

}  // namespace
}  // namespace linearnexus

LINEARNEXUS_PLUGIN("tasks", "1.0.0", "built-in RL tasks with verifiable rewards: arithmetic, reverse",
                   linearnexus::register_tasks)
