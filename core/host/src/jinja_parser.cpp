// The chat-template parser's statements (jinja2/parser.py's parse_statement and the tags it knows);
// expressions are jinja_expr.cpp's.
#include "jinja_parser.h"

#include <initializer_list>

#include "jinja_expr.h"

namespace linearnexus::jinja {
namespace {

class Parser : public ExprParser {
 public:
  Parser(std::vector<Token> toks, int max_depth, Program& prog) : ExprParser(std::move(toks), max_depth), prog_(prog) {}
  Body parse_all() {
    Body body = subparse({});
    if (cur().type != Tok::Eof) fail_here("unexpected tag");
    return body;
  }

 private:
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

  int loop_depth_ = 0;  // break / continue are only valid inside a for loop
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
    next();
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
  int saved_loops = loop_depth_;
  loop_depth_ = 0;  // the body runs as the caller() macro, outside any loop
  s->bodies.push_back(parse_statements({"endcall"}, true));
  loop_depth_ = saved_loops;
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

}  // namespace

std::unique_ptr<Program> parse_template(const std::string& source, int max_depth) {
  auto prog = std::make_unique<Program>();
  prog->body = Parser(tokenize(source), max_depth, *prog).parse_all();
  return prog;
}

}  // namespace linearnexus::jinja
