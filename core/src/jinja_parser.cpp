// The chat-template parser: jinja2/parser.py's recursive descent, statement by statement and
// precedence level by precedence level, so templates parse exactly as Jinja parses them.
#include "jinja_parser.h"

#include <algorithm>
#include <initializer_list>

#include "jinja_filters.h"

namespace linearnexus::jinja {
namespace {

ExprPtr node(ExprKind kind, int line) {
  auto e = std::make_unique<Expr>();
  e->kind = kind;
  e->line = line;
  return e;
}

class Parser {
 public:
  Parser(std::vector<Token> toks, int max_depth, Program& prog)
      : toks_(std::move(toks)), max_depth_(max_depth), prog_(prog) {}
  Body parse_all() {
    Body body = subparse({});
    if (cur().type != Tok::Eof) fail_here("unexpected tag");
    return body;
  }

 private:
  // Every recursive rule takes a level; deeper text is an Error, not a stack overflow.
  struct Deeper {
    explicit Deeper(Parser& p) : p_(p) {
      if (++p_.depth_ > p_.max_depth_)
        template_error(p_.cur().line, "the template nests more than " + std::to_string(p_.max_depth_) + " levels deep");
    }
    ~Deeper() { --p_.depth_; }
    Parser& p_;
  };

  const Token& cur() const { return toks_[i_]; }
  const Token& look() const { return toks_[std::min(i_ + 1, toks_.size() - 1)]; }
  void next() {
    if (i_ + 1 < toks_.size()) ++i_;
  }
  bool is_op(const char* op) const { return cur().type == Tok::Op && cur().text == op; }
  bool is_name(const char* n) const { return cur().type == Tok::Name && cur().text == n; }
  bool skip_op(const char* op) {
    if (!is_op(op)) return false;
    next();
    return true;
  }
  bool skip_name(const char* n) {
    if (!is_name(n)) return false;
    next();
    return true;
  }
  static std::string describe(const Token& t) {
    switch (t.type) {
      case Tok::Eof: return "end of template";
      case Tok::VarEnd: return "end of print statement";
      case Tok::BlockEnd: return "end of statement block";
      case Tok::Data: return "template data";
      case Tok::String: return "string";
      default: return t.text;
    }
  }
  [[noreturn]] void fail_here(const std::string& what) const {
    template_error(cur().line, what + " (at '" + describe(cur()) + "')");
  }
  void expect_op(const char* op) {
    if (!skip_op(op)) fail_here(std::string("expected '") + op + "'");
  }
  void expect(Tok type, const char* what) {
    if (cur().type != type) fail_here(std::string("expected ") + what);
    next();
  }
  std::string expect_name() {
    if (cur().type != Tok::Name) fail_here("expected a name");
    std::string n = cur().text;
    next();
    return n;
  }

  Body subparse(std::initializer_list<const char*> end_tokens);
  Body parse_statements(std::initializer_list<const char*> end_tokens, bool drop_needle);
  StmtPtr parse_statement();
  StmtPtr parse_for();
  StmtPtr parse_if();
  StmtPtr parse_set();
  StmtPtr parse_macro();
  StmtPtr parse_call_block();
  StmtPtr parse_with();
  void parse_signature(Stmt& s);
  Target parse_target(bool name_only, bool with_namespace, const char* end_rule);

  ExprPtr parse_tuple(bool with_condexpr = true, const char* end_rule = nullptr, bool explicit_parens = false);
  bool is_tuple_end(const char* end_rule) const {
    if (cur().type == Tok::VarEnd || cur().type == Tok::BlockEnd || is_op(")")) return true;
    return end_rule && is_name(end_rule);
  }
  ExprPtr parse_expression(bool with_condexpr = true);
  ExprPtr parse_or();
  ExprPtr parse_and();
  ExprPtr parse_not();
  ExprPtr parse_compare();
  ExprPtr parse_binary(int level);
  ExprPtr parse_unary(bool with_filter);
  ExprPtr parse_primary();
  ExprPtr parse_postfix(ExprPtr e);
  ExprPtr parse_filter_expr(ExprPtr e);
  ExprPtr parse_subscript(ExprPtr e);
  ExprPtr parse_subscribed();
  void parse_call_args(Expr& call);
  ExprPtr parse_filter(ExprPtr e, bool start_inline);
  ExprPtr parse_test(ExprPtr e);

  std::vector<Token> toks_;
  std::size_t i_ = 0;
  int depth_ = 0, max_depth_;
  int loop_depth_ = 0;              // break / continue are only valid inside a for loop
  std::vector<Stmt*> macros_;       // innermost macro / call block being parsed: its varargs / kwargs
  Program& prog_;
};

Body Parser::subparse(std::initializer_list<const char*> end_tokens) {
  Deeper guard(*this);
  Body body;
  while (cur().type != Tok::Eof) {
    const Token& t = cur();
    if (t.type == Tok::Data) {
      auto s = std::make_unique<Stmt>();
      s->kind = StmtKind::Data;
      s->line = t.line;
      s->text = t.text;
      body.push_back(std::move(s));
      next();
    } else if (t.type == Tok::VarBegin) {
      auto s = std::make_unique<Stmt>();
      s->kind = StmtKind::Print;
      s->line = t.line;
      next();
      s->exprs.push_back(parse_tuple());
      expect(Tok::VarEnd, "'}}'");
      body.push_back(std::move(s));
    } else if (t.type == Tok::BlockBegin) {
      next();
      for (const char* end : end_tokens)
        if (is_name(end)) return body;
      body.push_back(parse_statement());
      expect(Tok::BlockEnd, "'%}'");
    } else {
      fail_here("unexpected token");
    }
  }
  return body;
}

Body Parser::parse_statements(std::initializer_list<const char*> end_tokens, bool drop_needle) {
  skip_op(":");
  expect(Tok::BlockEnd, "'%}'");
  Body body = subparse(end_tokens);
  if (cur().type == Tok::Eof) {
    std::string names;
    for (const char* e : end_tokens) names += std::string(names.empty() ? "'" : " or '") + e + "'";
    template_error(cur().line, "unexpected end of template: Jinja was looking for " + names);
  }
  if (drop_needle) next();
  return body;
}

StmtPtr Parser::parse_statement() {
  if (cur().type != Tok::Name) fail_here("tag name expected");
  const std::string tag = cur().text;
  int line = cur().line;
  if (tag == "for") return parse_for();
  if (tag == "if") return parse_if();
  if (tag == "set") return parse_set();
  if (tag == "macro") return parse_macro();
  if (tag == "call") return parse_call_block();
  if (tag == "with") return parse_with();
  auto s = std::make_unique<Stmt>();
  s->line = line;
  if (tag == "filter") {  // {% filter upper %}...{% endfilter %}
    s->kind = StmtKind::FilterBlock;
    s->exprs.push_back(parse_filter(nullptr, true));
    s->bodies.push_back(parse_statements({"endfilter"}, true));
  } else if (tag == "generation") {  // transformers' tag: marks the assistant's output
    next();
    s->kind = StmtKind::Generation;
    prog_.has_generation = true;
    s->bodies.push_back(parse_statements({"endgeneration"}, true));
  } else if (tag == "break" || tag == "continue") {
    if (loop_depth_ == 0) template_error(line, "'" + tag + "' outside of a for loop");
    next();
    s->kind = tag == "break" ? StmtKind::Break : StmtKind::Continue;
  } else if (tag == "print") {
    next();
    s->kind = StmtKind::Print;
    while (cur().type != Tok::BlockEnd) {
      if (!s->exprs.empty()) expect_op(",");
      s->exprs.push_back(parse_expression());
    }
  } else if (tag == "block" || tag == "extends" || tag == "include" || tag == "import" || tag == "from" ||
             tag == "autoescape") {
    template_error(line, "{% " + tag + " %} is not supported in chat templates");
  } else {
    template_error(line, "Encountered unknown tag '" + tag + "'");
  }
  return s;
}

StmtPtr Parser::parse_for() {
  auto s = std::make_unique<Stmt>();
  s->kind = StmtKind::For;
  s->line = cur().line;
  next();
  s->targets.push_back(parse_target(false, false, "in"));
  if (!skip_name("in")) fail_here("expected 'in'");
  s->exprs.push_back(parse_tuple(false, "recursive"));
  s->exprs.push_back(skip_name("if") ? parse_expression() : nullptr);
  if (is_name("recursive")) template_error(s->line, "recursive for loops are not supported");
  ++loop_depth_;
  s->bodies.push_back(parse_statements({"endfor", "else"}, false));
  --loop_depth_;
  bool has_else = cur().text == "else";
  next();
  s->bodies.push_back(has_else ? parse_statements({"endfor"}, true) : Body{});
  return s;
}

StmtPtr Parser::parse_if() {
  auto s = std::make_unique<Stmt>();
  s->kind = StmtKind::If;
  s->line = cur().line;
  next();
  for (;;) {
    s->exprs.push_back(parse_tuple(false));
    s->bodies.push_back(parse_statements({"elif", "else", "endif"}, false));
    std::string which = cur().text;
    next();
    if (which == "elif") continue;
    if (which == "else") s->bodies.push_back(parse_statements({"endif"}, true));
    break;
  }
  return s;
}

StmtPtr Parser::parse_set() {
  auto s = std::make_unique<Stmt>();
  s->line = cur().line;
  next();
  s->targets.push_back(parse_target(false, true, nullptr));
  if (skip_op("=")) {
    s->kind = StmtKind::Set;
    s->exprs.push_back(parse_tuple());
    return s;
  }
  s->kind = StmtKind::SetBlock;  // {% set x %}...{% endset %}, optionally {% set x | filter %}
  s->exprs.push_back(is_op("|") ? parse_filter(nullptr, false) : nullptr);
  s->bodies.push_back(parse_statements({"endset"}, true));
  return s;
}

void Parser::parse_signature(Stmt& s) {
  expect_op("(");
  while (!is_op(")")) {
    if (!s.params.empty()) expect_op(",");
    Param p;
    p.name = expect_name();
    for (const auto& other : s.params)
      if (other.name == p.name) template_error(s.line, "duplicate argument '" + p.name + "' in a macro definition");
    if (skip_op("="))
      p.default_value = parse_expression();
    else if (!s.params.empty() && s.params.back().default_value)
      fail_here("non-default argument follows default argument");
    s.params.push_back(std::move(p));
  }
  expect_op(")");
}

StmtPtr Parser::parse_macro() {
  auto s = std::make_unique<Stmt>();
  s->kind = StmtKind::Macro;
  s->line = cur().line;
  next();
  s->text = expect_name();
  parse_signature(*s);
  macros_.push_back(s.get());
  int saved_loops = loop_depth_;
  loop_depth_ = 0;  // a macro body is not inside the caller's loop
  s->bodies.push_back(parse_statements({"endmacro"}, true));
  loop_depth_ = saved_loops;
  macros_.pop_back();
  return s;
}

StmtPtr Parser::parse_call_block() {
  auto s = std::make_unique<Stmt>();
  s->kind = StmtKind::CallBlock;
  s->line = cur().line;
  next();
  if (is_op("(")) parse_signature(*s);
  s->exprs.push_back(parse_expression());
  if (s->exprs[0]->kind != ExprKind::Call) template_error(s->line, "expected call");
  macros_.push_back(s.get());
  s->bodies.push_back(parse_statements({"endcall"}, true));
  macros_.pop_back();
  return s;
}

StmtPtr Parser::parse_with() {
  auto s = std::make_unique<Stmt>();
  s->kind = StmtKind::With;
  s->line = cur().line;
  next();
  while (cur().type != Tok::BlockEnd) {
    if (!s->targets.empty()) expect_op(",");
    s->targets.push_back(parse_target(false, false, nullptr));
    expect_op("=");
    s->exprs.push_back(parse_expression());
  }
  s->bodies.push_back(parse_statements({"endwith"}, true));
  return s;
}

// Names (possibly parenthesized, comma-separated) or, for set, `ns.attr`.
Target Parser::parse_target(bool name_only, bool with_namespace, const char* end_rule) {
  Target t;
  if (with_namespace && cur().type == Tok::Name && look().type == Tok::Op && look().text == ".") {
    t.names.push_back(expect_name());
    next();
    t.attr = expect_name();
    return t;
  }
  if (name_only) {
    t.names.push_back(expect_name());
    return t;
  }
  bool parens = skip_op("(");
  for (;;) {
    if (!t.names.empty()) {
      if (!skip_op(",")) break;
      t.unpack = true;
      if (is_tuple_end(end_rule) || (!parens && is_op("="))) break;
    }
    if (cur().type != Tok::Name || cur().text == "true" || cur().text == "false" || cur().text == "none" ||
        cur().text == "True" || cur().text == "False" || cur().text == "None")
      fail_here("can't assign to this");
    t.names.push_back(expect_name());
  }
  if (parens) {
    expect_op(")");
    t.unpack = t.unpack || t.names.size() > 1;
  }
  return t;
}

// ---- expressions ----

ExprPtr Parser::parse_tuple(bool with_condexpr, const char* end_rule, bool explicit_parens) {
  int line = cur().line;
  std::vector<ExprPtr> args;
  bool is_tuple = false;
  for (;;) {
    if (!args.empty()) expect_op(",");
    if (is_tuple_end(end_rule)) break;
    args.push_back(parse_expression(with_condexpr));
    if (is_op(","))
      is_tuple = true;
    else
      break;
  }
  if (!is_tuple) {
    if (!args.empty()) return std::move(args[0]);
    if (!explicit_parens) fail_here("Expected an expression");
  }
  auto e = node(ExprKind::TupleLit, line);
  e->args = std::move(args);
  return e;
}

ExprPtr Parser::parse_expression(bool with_condexpr) {
  Deeper guard(*this);
  if (!with_condexpr) return parse_or();
  int line = cur().line;
  ExprPtr e = parse_or();
  while (skip_name("if")) {  // `a if c else b`; without else the result is Undefined
    auto cond = node(ExprKind::Cond, line);
    cond->args.push_back(parse_or());
    cond->args.push_back(std::move(e));
    cond->args.push_back(skip_name("else") ? parse_expression() : nullptr);
    e = std::move(cond);
  }
  return e;
}

ExprPtr Parser::parse_or() {
  ExprPtr left = parse_and();
  while (is_name("or")) {
    auto e = node(ExprKind::Or, cur().line);
    next();
    e->args.push_back(std::move(left));
    e->args.push_back(parse_and());
    left = std::move(e);
  }
  return left;
}

ExprPtr Parser::parse_and() {
  ExprPtr left = parse_not();
  while (is_name("and")) {
    auto e = node(ExprKind::And, cur().line);
    next();
    e->args.push_back(std::move(left));
    e->args.push_back(parse_not());
    left = std::move(e);
  }
  return left;
}

ExprPtr Parser::parse_not() {
  if (is_name("not")) {
    Deeper guard(*this);
    auto e = node(ExprKind::Not, cur().line);
    next();
    e->args.push_back(parse_not());
    return e;
  }
  return parse_compare();
}

ExprPtr Parser::parse_compare() {
  int line = cur().line;
  ExprPtr first = parse_binary(0);
  std::unique_ptr<Expr> cmp;
  for (;;) {
    std::string op;
    if (cur().type == Tok::Op && (cur().text == "==" || cur().text == "!=" || cur().text == "<" ||
                                  cur().text == "<=" || cur().text == ">" || cur().text == ">=")) {
      op = cur().text;
      next();
    } else if (skip_name("in")) {
      op = "in";
    } else if (is_name("not") && look().type == Tok::Name && look().text == "in") {
      next();
      next();
      op = "notin";
    } else {
      break;
    }
    if (!cmp) {
      cmp = node(ExprKind::Compare, line);
      cmp->args.push_back(std::move(first));
    }
    cmp->ops.push_back(op);
    cmp->args.push_back(parse_binary(0));
  }
  return cmp ? std::move(cmp) : std::move(first);
}

// Jinja's math1 (+ -), concat (~), math2 (* / // %) and pow (**) levels, loosest first.
ExprPtr Parser::parse_binary(int level) {
  static const std::vector<std::vector<std::string>> levels = {{"+", "-"}, {"~"}, {"*", "/", "//", "%"}, {"**"}};
  if (level == 4) return parse_unary(true);
  int line = cur().line;
  ExprPtr left = parse_binary(level + 1);
  if (level == 1) {  // a ~ b ~ c is one Concat node
    if (!is_op("~")) return left;
    auto e = node(ExprKind::Concat, line);
    e->args.push_back(std::move(left));
    while (skip_op("~")) e->args.push_back(parse_binary(level + 1));
    return e;
  }
  for (;;) {
    const auto& ops = levels[level];
    if (cur().type != Tok::Op || std::find(ops.begin(), ops.end(), cur().text) == ops.end()) return left;
    auto e = node(ExprKind::Binary, line);
    e->name = cur().text;
    next();
    e->args.push_back(std::move(left));
    e->args.push_back(parse_binary(level + 1));
    left = std::move(e);
  }
}

ExprPtr Parser::parse_unary(bool with_filter) {
  ExprPtr e;
  if (is_op("-") || is_op("+")) {
    Deeper guard(*this);
    e = node(is_op("-") ? ExprKind::Neg : ExprKind::Pos, cur().line);
    next();
    e->args.push_back(parse_unary(false));
  } else {
    e = parse_primary();
  }
  e = parse_postfix(std::move(e));
  return with_filter ? parse_filter_expr(std::move(e)) : std::move(e);
}

ExprPtr Parser::parse_primary() {
  const Token& t = cur();
  int line = t.line;
  ExprPtr e = node(ExprKind::Const, line);
  if (t.type == Tok::Name) {
    if (t.text == "true" || t.text == "True" || t.text == "false" || t.text == "False") {
      e->value = Value::boolean(t.text[0] == 't' || t.text[0] == 'T');
    } else if (t.text == "none" || t.text == "None") {
      e->value = Value::none();
    } else {
      e->kind = ExprKind::Name;
      e->name = t.text;
      if (!macros_.empty() && t.text == "varargs") macros_.back()->uses_varargs = true;
      if (!macros_.empty() && t.text == "kwargs") macros_.back()->uses_kwargs = true;
    }
    next();
  } else if (t.type == Tok::String) {
    std::string s;
    while (cur().type == Tok::String) {  // "a" "b" is "ab"
      s += cur().text;
      next();
    }
    e->value = Value::text(std::move(s));
  } else if (t.type == Tok::Int) {
    e->value = Value::integer(t.ival);
    next();
  } else if (t.type == Tok::Float) {
    e->value = Value::number(t.fval);
    next();
  } else if (t.type == Tok::Op && (t.text == "(" || t.text == "[" || t.text == "{")) {
    Deeper guard(*this);
    std::string open = t.text;
    next();
    if (open == "(") {
      e = parse_tuple(true, nullptr, true);
      expect_op(")");
    } else {
      e->kind = open == "[" ? ExprKind::ListLit : ExprKind::DictLit;
      const char* close = open == "[" ? "]" : "}";
      while (!is_op(close)) {
        if (!e->args.empty()) {
          expect_op(",");
          if (is_op(close)) break;
        }
        e->args.push_back(parse_expression());
        if (open == "{") {
          expect_op(":");
          e->args.push_back(parse_expression());
        }
      }
      expect_op(close);
    }
  } else {
    fail_here("unexpected token");
  }
  return e;
}

ExprPtr Parser::parse_postfix(ExprPtr e) {
  for (;;) {
    if (is_op(".") || is_op("["))
      e = parse_subscript(std::move(e));
    else if (is_op("(")) {
      auto call = node(ExprKind::Call, cur().line);
      call->args.push_back(std::move(e));
      parse_call_args(*call);
      e = std::move(call);
    } else
      return e;
  }
}

ExprPtr Parser::parse_filter_expr(ExprPtr e) {
  for (;;) {
    if (is_op("|")) {
      e = parse_filter(std::move(e), false);
    } else if (is_name("is")) {
      e = parse_test(std::move(e));
    } else if (is_op("(")) {
      auto call = node(ExprKind::Call, cur().line);
      call->args.push_back(std::move(e));
      parse_call_args(*call);
      e = std::move(call);
    } else {
      return e;
    }
  }
}

ExprPtr Parser::parse_subscript(ExprPtr obj) {
  int line = cur().line;
  if (skip_op(".")) {
    if (cur().type == Tok::Name) {
      auto e = node(ExprKind::GetAttr, line);
      e->name = expect_name();
      e->args.push_back(std::move(obj));
      return e;
    }
    if (cur().type != Tok::Int) fail_here("expected name or number");
    auto e = node(ExprKind::GetItem, line);
    e->args.push_back(std::move(obj));
    auto key = node(ExprKind::Const, line);
    key->value = Value::integer(cur().ival);
    next();
    e->args.push_back(std::move(key));
    return e;
  }
  expect_op("[");
  std::vector<ExprPtr> keys;
  while (!is_op("]")) {
    if (!keys.empty()) expect_op(",");
    keys.push_back(parse_subscribed());
  }
  expect_op("]");
  if (keys.empty()) template_error(line, "expected subscript expression");
  if (keys.size() > 1)
    for (const auto& k : keys)
      if (k->kind == ExprKind::Slice) template_error(line, "a subscript with several slices is not supported");
  ExprPtr key;
  if (keys.size() == 1) {
    key = std::move(keys[0]);
  } else {
    key = node(ExprKind::TupleLit, line);
    key->args = std::move(keys);
  }
  if (key->kind == ExprKind::Slice) {  // obj[a:b:c]: the slice node takes the object as its first arg
    key->args[0] = std::move(obj);
    return key;
  }
  auto e = node(ExprKind::GetItem, line);
  e->args.push_back(std::move(obj));
  e->args.push_back(std::move(key));
  return e;
}

ExprPtr Parser::parse_subscribed() {
  int line = cur().line;
  ExprPtr start;
  if (!is_op(":")) {
    start = parse_expression();
    if (!is_op(":")) return start;
  }
  next();  // the first colon
  auto e = node(ExprKind::Slice, line);
  e->args.push_back(nullptr);  // the object, filled in by parse_subscript
  e->args.push_back(std::move(start));
  e->args.push_back(is_op(":") || is_op("]") || is_op(",") ? nullptr : parse_expression());
  if (skip_op(":"))
    e->args.push_back(is_op("]") || is_op(",") ? nullptr : parse_expression());
  else
    e->args.push_back(nullptr);
  return e;
}

void Parser::parse_call_args(Expr& call) {
  int line = cur().line;
  expect_op("(");
  bool require_comma = false;
  auto ensure = [&](bool ok) {
    if (!ok) template_error(line, "invalid syntax for function call expression");
  };
  while (!is_op(")")) {
    if (require_comma) {
      expect_op(",");
      if (is_op(")")) break;
    }
    if (skip_op("*")) {
      ensure(!call.dyn_args && !call.dyn_kwargs);
      call.dyn_args = parse_expression();
    } else if (skip_op("**")) {
      ensure(!call.dyn_kwargs);
      call.dyn_kwargs = parse_expression();
    } else if (cur().type == Tok::Name && look().type == Tok::Op && look().text == "=") {
      ensure(!call.dyn_kwargs);
      std::string key = expect_name();
      next();
      call.kwargs.push_back(Keyword{key, parse_expression()});
    } else {
      ensure(!call.dyn_args && !call.dyn_kwargs && call.kwargs.empty());
      call.args.push_back(parse_expression());
    }
    require_comma = true;
  }
  expect_op(")");
}

ExprPtr Parser::parse_filter(ExprPtr operand, bool start_inline) {
  while (is_op("|") || start_inline) {
    if (!start_inline) next();
    start_inline = false;
    auto e = node(ExprKind::Filter, cur().line);
    e->name = expect_name();
    while (skip_op(".")) e->name += "." + expect_name();
    if (!is_jinja_filter(e->name)) template_error(e->line, "No filter named '" + e->name + "'");
    e->args.push_back(std::move(operand));
    if (is_op("(")) parse_call_args(*e);
    operand = std::move(e);
  }
  return operand;
}

ExprPtr Parser::parse_test(ExprPtr operand) {
  int line = cur().line;
  next();  // `is`
  bool negated = skip_name("not");
  auto e = node(ExprKind::Test, line);
  e->name = expect_name();
  while (skip_op(".")) e->name += "." + expect_name();
  if (!is_jinja_test(e->name)) template_error(line, "No test named '" + e->name + "'");
  e->args.push_back(std::move(operand));
  const Token& t = cur();
  if (is_op("(")) {
    parse_call_args(*e);
  } else if ((t.type == Tok::Name || t.type == Tok::String || t.type == Tok::Int || t.type == Tok::Float ||
              is_op("[") || is_op("{")) &&
             !is_name("else") && !is_name("or") && !is_name("and")) {
    if (is_name("is")) fail_here("You cannot chain multiple tests with is");
    e->args.push_back(parse_postfix(parse_primary()));  // `x is divisibleby 3`, `x is sameas none`
  }
  if (!negated) return e;
  auto n = node(ExprKind::Not, line);
  n->args.push_back(std::move(e));
  return n;
}

}  // namespace

std::unique_ptr<Program> parse_template(const std::string& source, int max_depth) {
  auto prog = std::make_unique<Program>();
  prog->body = Parser(tokenize(source), max_depth, *prog).parse_all();
  return prog;
}

}  // namespace linearnexus::jinja
