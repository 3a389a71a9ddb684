// The chat-template expression parser (jinja_expr.h): one function per precedence level of
// jinja2/parser.py, so expressions group exactly as in Jinja.
#include "jinja_expr.h"

#include <algorithm>

#include "jinja_filters.h"
#include "jinja_tests.h"

namespace linearnexus::jinja {

ExprPtr make_expr(ExprKind kind, int line) {
  auto e = std::make_unique<Expr>();
  e->kind = kind;
  e->line = line;
  return e;
}

ExprParser::Deeper::Deeper(ExprParser& p) : p_(p) {
  if (++p_.depth_ > p_.max_depth_) {
    --p_.depth_;
    template_error(p_.cur().line, "the template nests more than " + std::to_string(p_.max_depth_) + " levels deep");
  }
}

bool ExprParser::skip_op(const char* op) {
  if (!is_op(op)) return false;
  next();
  return true;
}

bool ExprParser::skip_name(const char* n) {
  if (!is_name(n)) return false;
  next();
  return true;
}

void ExprParser::fail_here(const std::string& what) const {
  const Token& t = cur();
  std::string desc = t.type == Tok::Eof        ? "end of template"
                     : t.type == Tok::VarEnd   ? "end of print statement"
                     : t.type == Tok::BlockEnd ? "end of statement block"
                     : t.type == Tok::Data     ? "template data"
                     : t.type == Tok::String   ? "string"
                                               : t.text;
  template_error(t.line, what + " (at '" + desc + "')");
}

void ExprParser::expect_op(const char* op) {
  if (!skip_op(op)) fail_here(std::string("expected '") + op + "'");
}

void ExprParser::expect(Tok type, const char* what) {
  if (cur().type != type) fail_here(std::string("expected ") + what);
  next();
}

std::string ExprParser::expect_name() {
  if (cur().type != Tok::Name) fail_here("expected a name");
  std::string n = cur().text;
  next();
  return n;
}

bool ExprParser::is_tuple_end(const char* end_rule) const {
  if (cur().type == Tok::VarEnd || cur().type == Tok::BlockEnd || is_op(")")) return true;
  return end_rule && is_name(end_rule);
}

ExprPtr ExprParser::parse_tuple(bool with_condexpr, const char* end_rule, bool explicit_parens) {
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
  auto e = make_expr(ExprKind::TupleLit, line);
  e->args = std::move(args);
  return e;
}

ExprPtr ExprParser::parse_expression(bool with_condexpr) {
  Deeper guard(*this);
  if (!with_condexpr) return parse_or();
  int line = cur().line;
  ExprPtr e = parse_or();
  while (skip_name("if")) {  // `a if c else b`; without else the result is Undefined
    auto cond = make_expr(ExprKind::Cond, line);
    cond->args.push_back(parse_or());
    cond->args.push_back(std::move(e));
    cond->args.push_back(skip_name("else") ? parse_expression() : nullptr);
    e = std::move(cond);
  }
  return e;
}

ExprPtr ExprParser::parse_or() {
  ExprPtr left = parse_and();
  while (is_name("or")) {
    auto e = make_expr(ExprKind::Or, cur().line);
    next();
    e->args.push_back(std::move(left));
    e->args.push_back(parse_and());
    left = std::move(e);
  }
  return left;
}

ExprPtr ExprParser::parse_and() {
  ExprPtr left = parse_not();
  while (is_name("and")) {
    auto e = make_expr(ExprKind::And, cur().line);
    next();
    e->args.push_back(std::move(left));
    e->args.push_back(parse_not());
    left = std::move(e);
  }
  return left;
}

ExprPtr ExprParser::parse_not() {
  if (is_name("not")) {
    Deeper guard(*this);
    auto e = make_expr(ExprKind::Not, cur().line);
    next();
    e->args.push_back(parse_not());
    return e;
  }
  return parse_compare();
}

ExprPtr ExprParser::parse_compare() {
  int line = cur().line;
  ExprPtr first = parse_binary(0);
  std::unique_ptr<Expr> cmp;
  for (;;) {
    std::string op;
    if (cur().type == Tok::Op && (cur().text == "==" || cur().text == "!=" || cur().text == "<" || cur().text == "<=" ||
                                  cur().text == ">" || cur().text == ">=")) {
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
      cmp = make_expr(ExprKind::Compare, line);
      cmp->args.push_back(std::move(first));
    }
    cmp->ops.push_back(op);
    cmp->args.push_back(parse_binary(0));
  }
  return cmp ? std::move(cmp) : std::move(first);
}

// Jinja's math1 (+ -), concat (~), math2 (* / // %) and pow (**) levels, loosest first.
ExprPtr ExprParser::parse_binary(int level) {
  static const std::vector<std::vector<std::string>> levels = {{"+", "-"}, {"~"}, {"*", "/", "//", "%"}, {"**"}};
  if (level == 4) return parse_unary(true);
  int line = cur().line;
  ExprPtr left = parse_binary(level + 1);
  if (level == 1) {  // a ~ b ~ c is one Concat node
    if (!is_op("~")) return left;
    auto e = make_expr(ExprKind::Concat, line);
    e->args.push_back(std::move(left));
    while (skip_op("~")) e->args.push_back(parse_binary(level + 1));
    return e;
  }
  for (;;) {
    const auto& ops = levels[level];
    if (cur().type != Tok::Op || std::find(ops.begin(), ops.end(), cur().text) == ops.end()) return left;
    auto e = make_expr(ExprKind::Binary, line);
    e->name = cur().text;
    next();
    e->args.push_back(std::move(left));
    e->args.push_back(parse_binary(level + 1));
    left = std::move(e);
  }
}

ExprPtr ExprParser::parse_unary(bool with_filter) {
  ExprPtr e;
  if (is_op("-") || is_op("+")) {
    Deeper guard(*this);
    e = make_expr(is_op("-") ? ExprKind::Neg : ExprKind::Pos, cur().line);
    next();
    e->args.push_back(parse_unary(false));
  } else {
    e = parse_primary();
  }
  e = parse_postfix(std::move(e));
  return with_filter ? parse_filter_expr(std::move(e)) : std::move(e);
}

ExprPtr ExprParser::parse_primary() {
  const Token& t = cur();
  int line = t.line;
  ExprPtr e = make_expr(ExprKind::Const, line);
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
    std::string open = t.text;  // the parse_expression inside counts the level
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

ExprPtr ExprParser::parse_postfix(ExprPtr e) {
  for (;;) {
    if (is_op(".") || is_op("["))
      e = parse_subscript(std::move(e));
    else if (is_op("(")) {
      auto call = make_expr(ExprKind::Call, cur().line);
      call->args.push_back(std::move(e));
      parse_call_args(*call);
      e = std::move(call);
    } else
      return e;
  }
}

ExprPtr ExprParser::parse_filter_expr(ExprPtr e) {
  for (;;) {
    if (is_op("|")) {
      e = parse_filter(std::move(e), false);
    } else if (is_name("is")) {
      e = parse_test(std::move(e));
    } else if (is_op("(")) {
      auto call = make_expr(ExprKind::Call, cur().line);
      call->args.push_back(std::move(e));
      parse_call_args(*call);
      e = std::move(call);
    } else {
      return e;
    }
  }
}

ExprPtr ExprParser::parse_subscript(ExprPtr obj) {
  int line = cur().line;
  if (skip_op(".")) {
    if (cur().type == Tok::Name) {
      auto e = make_expr(ExprKind::GetAttr, line);
      e->name = expect_name();
      e->args.push_back(std::move(obj));
      return e;
    }
    if (cur().type != Tok::Int) fail_here("expected name or number");
    auto e = make_expr(ExprKind::GetItem, line);
    e->args.push_back(std::move(obj));
    auto key = make_expr(ExprKind::Const, line);
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
    key = make_expr(ExprKind::TupleLit, line);
    key->args = std::move(keys);
  }
  if (key->kind == ExprKind::Slice) {  // obj[a:b:c]: the slice node takes the object as its first arg
    key->args[0] = std::move(obj);
    return key;
  }
  auto e = make_expr(ExprKind::GetItem, line);
  e->args.push_back(std::move(obj));
  e->args.push_back(std::move(key));
  return e;
}

ExprPtr ExprParser::parse_subscribed() {
  int line = cur().line;
  ExprPtr start;
  if (!is_op(":")) {
    start = parse_expression();
    if (!is_op(":")) return start;
  }
  next();  // the first colon
  auto e = make_expr(ExprKind::Slice, line);
  e->args.push_back(nullptr);  // the object, filled in by parse_subscript
  e->args.push_back(std::move(start));
  e->args.push_back(is_op(":") || is_op("]") || is_op(",") ? nullptr : parse_expression());
  if (skip_op(":"))
    e->args.push_back(is_op("]") || is_op(",") ? nullptr : parse_expression());
  else
    e->args.push_back(nullptr);
  return e;
}

void ExprParser::parse_call_args(Expr& call) {
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

ExprPtr ExprParser::parse_filter(ExprPtr operand, bool start_inline) {
  while (is_op("|") || start_inline) {
    if (!start_inline) next();
    start_inline = false;
    auto e = make_expr(ExprKind::Filter, cur().line);
    e->name = expect_name();
    while (skip_op(".")) e->name += "." + expect_name();
    if (!is_jinja_filter(e->name)) template_error(e->line, "No filter named '" + e->name + "'");
    e->args.push_back(std::move(operand));
    if (is_op("(")) parse_call_args(*e);
    operand = std::move(e);
  }
  return operand;
}

ExprPtr ExprParser::parse_test(ExprPtr operand) {
  int line = cur().line;
  next();  // `is`
  bool negated = skip_name("not");
  auto e = make_expr(ExprKind::Test, line);
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
  auto n = make_expr(ExprKind::Not, line);
  n->args.push_back(std::move(e));
  return n;
}

}  // namespace linearnexus::jinja
