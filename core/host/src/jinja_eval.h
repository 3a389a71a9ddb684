#pragma once
// Runs a parsed chat template: Jinja's scoping (a for loop's iterations and macro calls get their own
// scope, if and set blocks do not), its loop object, macros and call blocks, and the output, whose
// provenance spans and per-message turns jinja.h describes.
#include <initializer_list>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "jinja.h"
#include "jinja_parser.h"
#include "jinja_value.h"

namespace linearnexus::jinja {

// A scope: a for loop's iteration, a macro call, a with block; the root holds the context and its
// parent the globals (range, namespace, raise_exception...).
struct Frame {
  std::shared_ptr<Frame> parent;
  std::vector<std::pair<std::string, Value>> vars;
  const Value* find(const std::string& name) const;
  void set(const std::string& name, Value value);
};
using FramePtr = std::shared_ptr<Frame>;

// Python-style binding of a builtin's arguments: positional in order, then by keyword.
class Args {
 public:
  Args(const std::string& fname, const CallArgs& args, std::initializer_list<const char*> params);
  const Value* get(std::size_t i) const { return got_[i]; }  // null: not passed
  Value get_or(std::size_t i, Value fallback) const { return got_[i] ? *got_[i] : std::move(fallback); }
  const Value& required(std::size_t i) const;  // passed and not Undefined, else fails

 private:
  std::string fname_;
  std::vector<const char*> params_;
  std::vector<const Value*> got_;
};

class Evaluator {
 public:
  Evaluator(const Program& program, const Limits& limits);
  ~Evaluator();
  Evaluator(const Evaluator&) = delete;
  Evaluator& operator=(const Evaluator&) = delete;

  // Renders the program with `root` (the context's variables, its parent the globals). Throws Error.
  Str render(FramePtr root, std::vector<OutputSpan>& turns);

  // ---- for filters, tests and methods ----
  Budget budget;
  Value call(const Value& fn, CallArgs args);
  Value apply_filter(const std::string& name, const Value& v, CallArgs args);
  bool apply_test(const std::string& name, const Value& v, CallArgs args);
  StrBuilder builder() { return StrBuilder(budget, limits_.max_string_bytes); }
  Value list(std::vector<Value> items, List::Kind kind = List::Plain) {
    return make_list(std::move(items), kind, budget);
  }
  NsPtr new_namespace();  // kept so the destructor can break reference cycles through it

 private:
  enum class Flow { Normal, Break, Continue };
  Flow exec(const Body& body, const FramePtr& frame);
  Flow exec_stmt(const Stmt& s, const FramePtr& frame);
  Flow exec_for(const Stmt& s, const FramePtr& frame);
  void assign(const Target& t, Value value, const FramePtr& frame);
  Value define_macro(const Stmt& s, const FramePtr& frame, const std::string& name);
  Value invoke_macro(const Stmt& s, const FramePtr& closure, CallArgs& args);
  Value eval(const Expr& e, const FramePtr& frame);
  Value eval_call(const Expr& e, const FramePtr& frame);
  CallArgs eval_args(const Expr& e, std::size_t first, const FramePtr& frame);
  Value eval_filter_chain(const Expr& e, const FramePtr& frame, Value innermost);

  // Output: the root buffer, or a capture (macro body, {% set %} / {% filter %} / {% generation %}).
  StrBuilder& out() { return outs_.back(); }
  void emit(const Str& s);
  void emit_lit(std::string_view text);
  void note_turn(std::size_t before);
  void push_capture() { outs_.push_back(builder()); }
  StrPtr pop_capture();

  struct Deeper {  // run-time nesting, so recursion is an Error rather than a stack overflow
    explicit Deeper(Evaluator& ev);
    ~Deeper() { --ev_.depth_; }
    Evaluator& ev_;
  };

  const Program& program_;
  Limits limits_;
  int line_ = 1;  // the node being evaluated: what an error names
  int depth_ = 0;
  std::vector<StrBuilder> outs_;
  std::vector<int> turns_;  // messages the enclosing for loops are at, innermost last
  std::vector<OutputSpan>* turn_spans_ = nullptr;
  std::vector<NsPtr> namespaces_;   // cleared at the end: namespaces can contain themselves
  std::vector<FramePtr> captured_;  // frames macros closed over: a frame holds its macros
};

}  // namespace linearnexus::jinja
