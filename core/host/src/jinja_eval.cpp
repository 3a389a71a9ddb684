// The chat-template evaluator (jinja_eval.h).
#include "jinja_eval.h"

#include "jinja_filters.h"
#include "jinja_ops.h"
#include "jinja_tests.h"
#include "linearnexus/error.h"

namespace linearnexus::jinja {

const Value* Frame::find(const std::string& name) const {
  for (const Frame* f = this; f; f = f->parent.get())
    for (const auto& [k, v] : f->vars)
      if (k == name) return &v;
  return nullptr;
}

void Frame::set(const std::string& name, Value value) {
  for (auto& [k, v] : vars)
    if (k == name) {
      v = std::move(value);
      return;
    }
  vars.emplace_back(name, std::move(value));
}

Args::Args(const std::string& fname, const CallArgs& args, std::initializer_list<const char*> params)
    : fname_(fname), params_(params), got_(params.size(), nullptr) {
  if (args.pos.size() > params.size())
    fail(fname + "() takes at most " + std::to_string(params.size()) + " argument(s) (" +
         std::to_string(args.pos.size()) + " given)");
  for (std::size_t i = 0; i < args.pos.size(); ++i) got_[i] = &args.pos[i];
  for (const auto& [key, value] : args.kw) {
    std::size_t i = 0;
    for (const char* p : params) {
      if (key == p) break;
      ++i;
    }
    if (i == params.size()) fail(fname + "() got an unexpected keyword argument '" + key + "'");
    if (got_[i]) fail(fname + "() got multiple values for argument '" + key + "'");
    got_[i] = &value;
  }
}

const Value& Args::required(std::size_t i) const {
  if (!got_[i]) fail(fname_ + "() missing required argument '" + params_[i] + "'");
  return got_[i]->defined();
}

Evaluator::Evaluator(const Program& program, const Limits& limits) : program_(program), limits_(limits) {
  budget.max_steps = limits.max_steps;
  budget.max_string = limits.max_string_bytes;
  budget.max_value_depth = limits.max_value_depth;
}

Evaluator::~Evaluator() {
  // A namespace can hold itself (`set ns.me = ns`) and a frame holds the macros that closed over it:
  // emptying them frees those cycles one level at a time (no deep recursive destruction either).
  for (const NsPtr& ns : namespaces_) ns->attrs = Dict();
  for (const FramePtr& f : captured_) f->vars.clear();
}

Evaluator::Deeper::Deeper(Evaluator& ev) : ev_(ev) {
  if (++ev_.depth_ > ev_.limits_.max_depth) {
    --ev_.depth_;
    fail("the template nests (or recurses) more than " + std::to_string(ev_.limits_.max_depth) + " levels deep");
  }
}

NsPtr Evaluator::new_namespace() {
  budget.charge(1);
  namespaces_.push_back(std::make_shared<Namespace>());
  return namespaces_.back();
}

Str Evaluator::render(FramePtr root, std::vector<OutputSpan>& turns) {
  turn_spans_ = &turns;
  outs_.clear();
  outs_.emplace_back(budget, limits_.max_output_bytes);
  try {
    exec(program_.body, root);
  } catch (const Failure& f) {
    template_error(line_, f.what());
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {  // a bug or the allocator: still an Error naming the line, not a crash
    template_error(line_, std::string("internal error while rendering: ") + e.what());
  }
  return *outs_.front().done();
}

void Evaluator::note_turn(std::size_t before) {
  // Only the root output is the render; captured output is accounted for when it is emitted there.
  if (outs_.size() != 1 || turns_.empty() || out().size() == before) return;
  int m = turns_.back();
  auto& spans = *turn_spans_;
  if (!spans.empty() && spans.back().message == m && spans.back().end == before)
    spans.back().end = out().size();
  else
    spans.push_back(OutputSpan{before, out().size(), m});
}

void Evaluator::emit(const Str& s) {
  std::size_t before = out().size();
  out().add(s);
  note_turn(before);
}

void Evaluator::emit_lit(std::string_view text) {
  std::size_t before = out().size();
  out().lit(text);
  note_turn(before);
}

StrPtr Evaluator::pop_capture() {
  StrPtr s = outs_.back().done();
  outs_.pop_back();
  return s;
}

Evaluator::Flow Evaluator::exec(const Body& body, const FramePtr& frame) {
  for (const StmtPtr& s : body) {
    Flow flow = exec_stmt(*s, frame);
    if (flow != Flow::Normal) return flow;
  }
  return Flow::Normal;
}

Evaluator::Flow Evaluator::exec_stmt(const Stmt& s, const FramePtr& frame) {
  Deeper guard(*this);
  budget.charge(1);
  line_ = s.line;
  switch (s.kind) {
    case StmtKind::Data:
      emit_lit(s.text);
      break;
    case StmtKind::Print:
      for (const ExprPtr& e : s.exprs) emit(*py_str(eval(*e, frame), budget));
      break;
    case StmtKind::If:
      for (std::size_t i = 0; i < s.exprs.size(); ++i)
        if (truthy(eval(*s.exprs[i], frame))) return exec(s.bodies[i], frame);
      if (s.bodies.size() > s.exprs.size()) return exec(s.bodies.back(), frame);
      break;
    case StmtKind::For:
      return exec_for(s, frame);
    case StmtKind::Set:
      assign(s.targets[0], eval(*s.exprs[0], frame), frame);
      break;
    case StmtKind::SetBlock: {  // {% set x %}...{% endset %}: the captured text, through the filters if any
      push_capture();
      Flow flow = exec(s.bodies[0], frame);
      Value v = Value::string(pop_capture());
      if (s.exprs[0]) v = eval_filter_chain(*s.exprs[0], frame, v);
      assign(s.targets[0], v, frame);
      return flow;
    }
    case StmtKind::Macro:
      frame->set(s.text, define_macro(s, frame, s.text));
      break;
    case StmtKind::CallBlock: {  // {% call m(...) %}body{% endcall %}: m gets the body as caller()
      const Expr& call_expr = *s.exprs[0];
      Value fn = eval(*call_expr.args[0], frame);
      CallArgs args = eval_args(call_expr, 1, frame);
      args.kw.emplace_back("caller", define_macro(s, frame, "caller"));
      line_ = s.line;
      emit(*py_str(call(fn, std::move(args)), budget));
      break;
    }
    case StmtKind::FilterBlock: {
      push_capture();
      Flow flow = exec(s.bodies[0], frame);
      Value v = Value::string(pop_capture());
      emit(*py_str(eval_filter_chain(*s.exprs[0], frame, v), budget));
      return flow;
    }
    case StmtKind::With: {
      std::vector<Value> values;  // evaluated in the enclosing scope, then bound in the new one
      for (const ExprPtr& e : s.exprs) values.push_back(eval(*e, frame));
      auto inner = std::make_shared<Frame>();
      inner->parent = frame;
      for (std::size_t i = 0; i < values.size(); ++i) assign(s.targets[i], values[i], inner);
      return exec(s.bodies[0], inner);
    }
    case StmtKind::Break:
      return Flow::Break;
    case StmtKind::Continue:
      return Flow::Continue;
    case StmtKind::Generation: {  // transformers' {% generation %}: the text is kept, its span recorded
      push_capture();
      Flow flow = exec(s.bodies[0], frame);
      StrPtr text = pop_capture();
      std::size_t start = out().size();
      emit(*text);
      out().tag(start, Span::Generation, turns_.empty() ? -1 : turns_.back());
      return flow;
    }
  }
  return Flow::Normal;
}

Evaluator::Flow Evaluator::exec_for(const Stmt& s, const FramePtr& frame) {
  std::vector<Value> items = iterate(*this, eval(*s.exprs[0], frame));
  if (const Expr* cond = s.exprs[1].get()) {  // `for x in xs if c`: loop.* counts only the kept items
    std::vector<Value> kept;
    for (Value& item : items) {
      auto f = std::make_shared<Frame>();
      f->parent = frame;
      assign(s.targets[0], item, f);
      if (truthy(eval(*cond, f))) kept.push_back(std::move(item));
    }
    items = std::move(kept);
  }
  if (items.empty()) {
    auto f = std::make_shared<Frame>();
    f->parent = frame;
    return exec(s.bodies[1], f);  // a break in the else block is the enclosing loop's
  }
  const std::int64_t n = std::int64_t(items.size());
  // loop.cycle / loop.changed are made once per loop and read the iteration from here.
  auto index = std::make_shared<std::int64_t>(0);
  auto last_changed = std::make_shared<Value>(Value::undefined("loop.changed"));
  auto cycle = std::make_shared<Callable>();
  cycle->name = "cycle";
  cycle->fn = [index](Evaluator&, CallArgs& args) -> Value {
    if (args.pos.empty()) fail("no items for cycling given");
    return args.pos[std::size_t(*index) % args.pos.size()];
  };
  auto changed = std::make_shared<Callable>();
  changed->name = "changed";
  changed->fn = [last_changed](Evaluator& ev, CallArgs& args) -> Value {
    Value now = ev.list(args.pos, List::Tuple);
    bool differs = last_changed->is_undefined() || !equals(*last_changed, now);
    *last_changed = now;
    return Value::boolean(differs);
  };
  for (std::int64_t i = 0; i < n; ++i) {
    line_ = s.line;
    budget.charge(8);  // an iteration allocates a scope and the loop object
    *index = i;
    auto f = std::make_shared<Frame>();
    f->parent = frame;
    assign(s.targets[0], items[i], f);
    Dict loop;  // distinct keys: appended without set()'s search
    auto& l = loop.items;
    l.reserve(13);
    l.emplace_back("index", Value::integer(i + 1));
    l.emplace_back("index0", Value::integer(i));
    l.emplace_back("revindex", Value::integer(n - i));
    l.emplace_back("revindex0", Value::integer(n - i - 1));
    l.emplace_back("first", Value::boolean(i == 0));
    l.emplace_back("last", Value::boolean(i == n - 1));
    l.emplace_back("length", Value::integer(n));
    l.emplace_back("depth", Value::integer(1));
    l.emplace_back("depth0", Value::integer(0));
    l.emplace_back("previtem", i > 0 ? items[i - 1] : Value::undefined("there is no previous item"));
    l.emplace_back("nextitem", i + 1 < n ? items[i + 1] : Value::undefined("there is no next item"));
    l.emplace_back("cycle", Value{FnPtr(cycle)});
    l.emplace_back("changed", Value{FnPtr(changed)});
    f->set("loop", make_dict(std::move(loop), budget));
    const Value& item = items[i];
    int message = item.is(Type::Dict) ? item.dict().message : -1;
    if (message >= 0) turns_.push_back(message);
    Flow flow = exec(s.bodies[0], f);
    if (message >= 0) turns_.pop_back();
    if (flow == Flow::Break) break;
  }
  return Flow::Normal;
}

void Evaluator::assign(const Target& t, Value value, const FramePtr& frame) {
  if (!t.attr.empty()) {
    const Value* ns = frame->find(t.names[0]);
    if (!ns || !ns->is(Type::Namespace)) fail("cannot assign attribute on non-namespace object");
    std::get<NsPtr>(ns->v)->attrs.set(t.attr, std::move(value));
    return;
  }
  if (!t.unpack) {
    frame->set(t.names[0], std::move(value));
    return;
  }
  std::vector<Value> items = iterate(*this, value.defined());
  if (items.size() < t.names.size())
    fail("not enough values to unpack (expected " + std::to_string(t.names.size()) + ", got " +
         std::to_string(items.size()) + ")");
  if (items.size() > t.names.size())
    fail("too many values to unpack (expected " + std::to_string(t.names.size()) + ")");
  for (std::size_t i = 0; i < items.size(); ++i) frame->set(t.names[i], items[i]);
}

Value Evaluator::define_macro(const Stmt& s, const FramePtr& frame, const std::string& name) {
  captured_.push_back(frame);
  auto fn = std::make_shared<Callable>();
  fn->name = name;
  const Stmt* macro = &s;
  FramePtr closure = frame;
  fn->fn = [macro, closure](Evaluator& ev, CallArgs& args) { return ev.invoke_macro(*macro, closure, args); };
  return Value{FnPtr(std::move(fn))};
}

// Jinja's macro call: positional then keyword arguments, defaults evaluated in the macro's scope,
// extra arguments in varargs / kwargs when the body reads them (an error otherwise), and the output
// returned as a string (with its spans).
Value Evaluator::invoke_macro(const Stmt& s, const FramePtr& closure, CallArgs& args) {
  Deeper guard(*this);
  const std::string name = s.kind == StmtKind::Macro ? s.text : "caller";
  auto f = std::make_shared<Frame>();
  f->parent = closure;
  std::vector<bool> bound(s.params.size(), false);
  std::vector<Value> extra;
  for (std::size_t i = 0; i < args.pos.size(); ++i) {
    if (i < s.params.size()) {
      f->set(s.params[i].name, args.pos[i]);
      bound[i] = true;
    } else {
      extra.push_back(args.pos[i]);
    }
  }
  if (!extra.empty() && !s.uses_varargs)
    fail("macro '" + name + "' takes not more than " + std::to_string(s.params.size()) + " argument(s)");
  Dict kwargs;
  for (auto& [key, value] : args.kw) {
    std::size_t i = 0;
    while (i < s.params.size() && s.params[i].name != key) ++i;
    if (i < s.params.size()) {
      if (bound[i]) fail("macro '" + name + "' got multiple values for argument '" + key + "'");
      f->set(key, value);
      bound[i] = true;
    } else if (key == "caller") {
      f->set(key, value);
    } else if (s.uses_kwargs) {
      kwargs.set(key, value);
    } else {
      fail("macro '" + name + "' takes no keyword argument '" + key + "'");
    }
  }
  for (std::size_t i = 0; i < s.params.size(); ++i) {
    if (bound[i]) continue;
    const Param& p = s.params[i];
    f->set(p.name, p.default_value ? eval(*p.default_value, f)
                                   : Value::undefined("parameter '" + p.name + "' was not provided"));
  }
  f->set("varargs", list(std::move(extra), List::Tuple));
  f->set("kwargs", make_dict(std::move(kwargs), budget));
  push_capture();
  exec(s.bodies[0], f);
  return Value::string(pop_capture());
}

Value Evaluator::call(const Value& fn, CallArgs args) {
  fn.defined();
  if (!fn.is(Type::Callable)) fail(std::string("'") + type_name(fn) + "' object is not callable");
  Deeper guard(*this);
  budget.charge(1);
  return std::get<FnPtr>(fn.v)->fn(*this, args);
}

Value Evaluator::apply_filter(const std::string& name, const Value& v, CallArgs args) {
  return jinja::apply_filter(*this, name, v, args);
}

bool Evaluator::apply_test(const std::string& name, const Value& v, CallArgs args) {
  return jinja::apply_test(*this, name, v, args);
}

CallArgs Evaluator::eval_args(const Expr& e, std::size_t first, const FramePtr& frame) {
  CallArgs args;
  for (std::size_t i = first; i < e.args.size(); ++i) args.pos.push_back(eval(*e.args[i], frame));
  for (const Keyword& k : e.kwargs) args.kw.emplace_back(k.name, eval(*k.value, frame));
  if (e.dyn_args)
    for (Value& v : iterate(*this, eval(*e.dyn_args, frame))) args.pos.push_back(std::move(v));
  if (e.dyn_kwargs) {
    Value d = eval(*e.dyn_kwargs, frame);
    if (!d.is(Type::Dict)) fail("argument after ** must be a mapping");
    for (const auto& [k, v] : d.dict().items) args.kw.emplace_back(k, v);
  }
  return args;
}

Value Evaluator::eval_filter_chain(const Expr& e, const FramePtr& frame, Value innermost) {
  Value operand = !e.args[0]                            ? std::move(innermost)
                  : e.args[0]->kind == ExprKind::Filter ? eval_filter_chain(*e.args[0], frame, std::move(innermost))
                                                        : eval(*e.args[0], frame);
  CallArgs args = eval_args(e, 1, frame);
  line_ = e.line;
  return apply_filter(e.name, operand, std::move(args));
}

Value Evaluator::eval(const Expr& e, const FramePtr& frame) {
  Deeper guard(*this);
  budget.charge(1);
  line_ = e.line;
  switch (e.kind) {
    case ExprKind::Const:
      return e.value;
    case ExprKind::Name: {
      const Value* v = frame->find(e.name);
      return v ? *v : Value::undefined("'" + e.name + "' is undefined");
    }
    case ExprKind::GetAttr: {
      Value obj = eval(*e.args[0], frame);
      line_ = e.line;
      return getattr(*this, obj, e.name);
    }
    case ExprKind::GetItem: {
      Value obj = eval(*e.args[0], frame), key = eval(*e.args[1], frame);
      line_ = e.line;
      return getitem(*this, obj, key);
    }
    case ExprKind::Slice: {
      Value parts[4];
      for (int i = 0; i < 4; ++i) parts[i] = e.args[i] ? eval(*e.args[i], frame) : Value::none();
      line_ = e.line;
      return slice(*this, parts[0], parts[1], parts[2], parts[3]);
    }
    case ExprKind::Call: {
      Value fn = eval(*e.args[0], frame);
      CallArgs args = eval_args(e, 1, frame);
      line_ = e.line;
      return call(fn, std::move(args));
    }
    case ExprKind::Filter:
      return eval_filter_chain(e, frame, Value::none());
    case ExprKind::Test: {
      Value operand = eval(*e.args[0], frame);
      CallArgs args = eval_args(e, 1, frame);
      line_ = e.line;
      return Value::boolean(apply_test(e.name, operand, std::move(args)));
    }
    case ExprKind::Neg:
    case ExprKind::Pos:
      return negate(eval(*e.args[0], frame), e.kind == ExprKind::Neg);
    case ExprKind::Not:
      return Value::boolean(!truthy(eval(*e.args[0], frame)));
    case ExprKind::And:
    case ExprKind::Or: {  // Python returns the deciding operand, not a bool
      Value left = eval(*e.args[0], frame);
      if (truthy(left) == (e.kind == ExprKind::Or)) return left;
      return eval(*e.args[1], frame);
    }
    case ExprKind::Binary: {
      Value left = eval(*e.args[0], frame), right = eval(*e.args[1], frame);
      line_ = e.line;
      return binary_op(*this, e.name, left, right);
    }
    case ExprKind::Compare: {  // a < b < c is a < b and b < c
      Value left = eval(*e.args[0], frame);
      for (std::size_t i = 0; i < e.ops.size(); ++i) {
        Value right = eval(*e.args[i + 1], frame);
        line_ = e.line;
        const std::string& op = e.ops[i];
        bool ok = op == "=="      ? equals(left, right)
                  : op == "!="    ? !equals(left, right)
                  : op == "in"    ? contains(right, left)
                  : op == "notin" ? !contains(right, left)
                  : op == "<"     ? compare(left, right) < 0
                  : op == "<="    ? compare(left, right) <= 0
                  : op == ">"     ? compare(left, right) > 0
                                  : compare(left, right) >= 0;
        if (!ok) return Value::boolean(false);
        left = std::move(right);
      }
      return Value::boolean(true);
    }
    case ExprKind::Concat: {
      StrBuilder b = builder();
      for (const ExprPtr& part : e.args) b.add(*py_str(eval(*part, frame), budget));
      return Value::string(b.done());
    }
    case ExprKind::Cond:
      if (truthy(eval(*e.args[0], frame))) return eval(*e.args[1], frame);
      if (e.args[2]) return eval(*e.args[2], frame);
      return Value::undefined("the inline if-expression on line " + std::to_string(e.line) +
                              " evaluated to false and no else section was defined.");
    case ExprKind::ListLit:
    case ExprKind::TupleLit: {
      std::vector<Value> items;
      for (const ExprPtr& item : e.args) items.push_back(eval(*item, frame));
      return list(std::move(items), e.kind == ExprKind::TupleLit ? List::Tuple : List::Plain);
    }
    case ExprKind::DictLit: {
      Dict d;
      for (std::size_t i = 0; i + 1 < e.args.size(); i += 2) {
        Value key = eval(*e.args[i], frame), value = eval(*e.args[i + 1], frame);
        if (!key.is_str()) fail("dict keys other than strings are not supported");
        d.set(key.str().s, std::move(value));
      }
      return make_dict(std::move(d), budget);
    }
  }
  fail("unknown expression");
}

}  // namespace linearnexus::jinja
