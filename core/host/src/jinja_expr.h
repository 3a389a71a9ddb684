#pragma once
// The expression half of the chat-template parser (jinja2/parser.py's parse_expression and below:
// conditional expressions, or / and / not, comparisons, + - ~ * / // % **, unary signs, filters,
// tests, calls, subscripts, literals), with the token cursor both halves share; jinja_parser.cpp
// parses statements on top of it.
#include <string>
#include <vector>

#include "jinja_parser.h"

namespace linearnexus::jinja {

ExprPtr make_expr(ExprKind kind, int line);

class ExprParser {
 public:
  ExprParser(std::vector<Token> toks, int max_depth) : toks_(std::move(toks)), max_depth_(max_depth) {}

  // Expressions separated by commas make a tuple (`{{ a, b }}`, `for x in a, b`); end_rule names a
  // keyword that ends the tuple (`in`, `recursive`).
  ExprPtr parse_tuple(bool with_condexpr = true, const char* end_rule = nullptr, bool explicit_parens = false);
  ExprPtr parse_expression(bool with_condexpr = true);
  // `| name(args) | ...` applied to operand (null inside {% filter %} and {% set x | f %} blocks).
  ExprPtr parse_filter(ExprPtr operand, bool start_inline);

 protected:
  // Every recursive rule takes a level; deeper text is an Error, not a stack overflow.
  struct Deeper {
    explicit Deeper(ExprParser& p);
    ~Deeper() { --p_.depth_; }
    ExprParser& p_;
  };

  const Token& cur() const { return toks_[i_]; }
  const Token& look() const { return toks_[i_ + 1 < toks_.size() ? i_ + 1 : toks_.size() - 1]; }
  void next() {
    if (i_ + 1 < toks_.size()) ++i_;
  }
  bool is_op(const char* op) const { return cur().type == Tok::Op && cur().text == op; }
  bool is_name(const char* n) const { return cur().type == Tok::Name && cur().text == n; }
  bool skip_op(const char* op);
  bool skip_name(const char* n);
  [[noreturn]] void fail_here(const std::string& what) const;
  void expect_op(const char* op);
  void expect(Tok type, const char* what);
  std::string expect_name();
  bool is_tuple_end(const char* end_rule) const;

  std::vector<Token> toks_;
  std::size_t i_ = 0;
  int depth_ = 0, max_depth_;
  std::vector<Stmt*> macros_;  // innermost macro / call block being parsed: its varargs / kwargs

 private:
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
  ExprPtr parse_test(ExprPtr e);
};

}  // namespace linearnexus::jinja
