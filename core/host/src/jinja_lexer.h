#pragma once
// Template text -> tokens, as Jinja2's lexer with transformers' settings: trim_blocks (the newline
// after a block or comment tag is dropped), lstrip_blocks (spaces and tabs before a block or comment
// tag on its own line are dropped), `-` / `+` whitespace control on any tag, {% raw %}, newlines
// normalized to \n and one trailing newline dropped (keep_trailing_newline=False).
#include <cstdint>
#include <string>
#include <vector>

namespace linearnexus::jinja {

enum class Tok { Data, VarBegin, VarEnd, BlockBegin, BlockEnd, Name, String, Int, Float, Op, Eof };

struct Token {
  Tok type = Tok::Eof;
  std::string text;  // Data's text, a Name, a String's decoded value, an Op ("+", "//", "(", ...)
  int line = 1;
  std::int64_t ival = 0;
  double fval = 0;
};

// Throws linearnexus::Error("chat template line N: ...") on text Jinja would not lex.
std::vector<Token> tokenize(const std::string& source);

// linearnexus::Error("chat template line N: what"): every error the module throws has this form.
[[noreturn]] void template_error(int line, const std::string& what);

}  // namespace linearnexus::jinja
