// Jinja2's lexer (jinja2/lexer.py) for transformers' settings; see jinja_lexer.h.
#include "jinja_lexer.h"

#include <cctype>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "jinja_value.h"
#include "linearnexus/error.h"

namespace linearnexus::jinja {

void template_error(int line, const std::string& what) {
  throw Error("chat template line " + std::to_string(line) + ": " + what);
}

namespace {

enum class Tag { Var, Block, Comment };

bool starts(const std::string& s, std::size_t pos, const char* lit) {
  return s.compare(pos, std::strlen(lit), lit) == 0;
}
bool is_digit(char c) { return c >= '0' && c <= '9'; }
bool is_name_start(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || static_cast<unsigned char>(c) >= 0x80;
}
bool is_name_char(char c) { return is_name_start(c) || is_digit(c); }
int count_newlines(const std::string& s, std::size_t b, std::size_t e) {
  int n = 0;
  for (std::size_t i = b; i < e; ++i) n += s[i] == '\n';
  return n;
}

// Python's \s (Unicode whitespace) starting at pos: the byte length of the run.
std::size_t space_run(const std::string& s, std::size_t pos) {
  std::size_t i = pos;
  while (i < s.size()) {
    std::size_t next = i;
    if (!py_isspace(utf8_next(s, next))) break;
    i = next;
  }
  return i - pos;
}

// str.rstrip(): the length of s[b, e) without its trailing whitespace.
std::size_t rstrip_end(const std::string& s, std::size_t b, std::size_t e) {
  auto offsets = utf8_offsets(std::string_view(s).substr(b, e - b));
  std::size_t k = offsets.size() - 1;
  while (k > 0) {
    std::size_t at = b + offsets[k - 1];
    if (!py_isspace(utf8_next(s, at))) break;
    --k;
  }
  return b + offsets[k];
}

class Lexer {
 public:
  explicit Lexer(std::string src) : s_(std::move(src)) {}
  std::vector<Token> run();

 private:
  void data(std::size_t b, std::size_t e, char sign, bool lstrip_ok);
  void tag(Tag kind);
  void comment();
  bool raw_begin(std::size_t at, char& sign, std::size_t& end) const;
  void raw();
  void number();
  void string_literal();
  void push(Tok type, std::string text = {}) { out_.push_back(Token{type, std::move(text), line_}); }

  std::string s_;
  std::size_t pos_ = 0;
  int line_ = 1;
  bool line_starting_ = true;  // the last tag ended with a newline (lstrip_blocks' condition)
  std::vector<Token> out_;
};

// Text before a tag: `-` strips all whitespace before it; otherwise lstrip_blocks drops the spaces
// between the line's start and a block or comment tag when nothing else is on that line.
void Lexer::data(std::size_t b, std::size_t e, char sign, bool lstrip_ok) {
  int newlines = count_newlines(s_, b, e);
  std::size_t end = e;
  if (sign == '-') {
    end = rstrip_end(s_, b, e);
  } else if (sign != '+' && lstrip_ok) {
    std::size_t nl = s_.rfind('\n', e == 0 ? 0 : e - 1);
    std::size_t l_pos = (nl == std::string::npos || nl < b) ? b : nl + 1;
    if ((l_pos > b || line_starting_) && l_pos < e && space_run(s_, l_pos) == e - l_pos) end = l_pos;
  }
  if (end > b) push(Tok::Data, s_.substr(b, end - b));
  line_ += newlines;
}

std::vector<Token> Lexer::run() {
  while (pos_ < s_.size()) {
    std::size_t at = pos_;
    while ((at = s_.find('{', at)) != std::string::npos) {
      if (at + 1 < s_.size() && std::strchr("{%#", s_[at + 1]) != nullptr) break;
      ++at;
    }
    if (at == std::string::npos) {
      push(Tok::Data, s_.substr(pos_));
      line_ += count_newlines(s_, pos_, s_.size());
      break;
    }
    char kind = s_[at + 1];
    char sign = at + 2 < s_.size() && (s_[at + 2] == '-' || s_[at + 2] == '+') ? s_[at + 2] : 0;
    char raw_sign = 0;
    std::size_t raw_end = 0;
    if (kind == '%' && raw_begin(at, raw_sign, raw_end)) {
      data(pos_, at, raw_sign, true);
      line_ += count_newlines(s_, at, raw_end);
      line_starting_ = s_[raw_end - 1] == '\n';
      pos_ = raw_end;
      raw();
      continue;
    }
    data(pos_, at, sign, kind != '{');
    pos_ = at + 2 + (sign ? 1 : 0);
    line_starting_ = false;
    if (kind == '#')
      comment();
    else
      tag(kind == '{' ? Tag::Var : Tag::Block);
  }
  push(Tok::Eof);
  return std::move(out_);
}

void Lexer::comment() {
  std::size_t start = pos_, p = s_.find("#}", pos_);
  if (p == std::string::npos) template_error(line_, "Missing end of comment tag");
  char sign = p > start && (s_[p - 1] == '-' || s_[p - 1] == '+') ? s_[p - 1] : 0;
  std::size_t end = p + 2;
  if (sign == '-')
    end += space_run(s_, end);
  else if (sign != '+' && end < s_.size() && s_[end] == '\n')
    ++end;  // trim_blocks applies to comments too
  line_ += count_newlines(s_, start, end);
  line_starting_ = s_[end - 1] == '\n';
  pos_ = end;
}

// {% raw %} / {%- raw -%} at `at`: Jinja's raw_begin, which (unlike other block tags) trim_blocks does
// not follow. Sets the whitespace sign and where the tag ends.
bool Lexer::raw_begin(std::size_t at, char& sign, std::size_t& end) const {
  std::size_t p = at + 2;
  sign = 0;
  if (p < s_.size() && (s_[p] == '-' || s_[p] == '+')) sign = s_[p++];
  p += space_run(s_, p);
  if (!starts(s_, p, "raw")) return false;
  p += 3;
  p += space_run(s_, p);
  if (starts(s_, p, "-%}")) {
    p += 3;
    p += space_run(s_, p);
  } else if (starts(s_, p, "%}")) {
    p += 2;
  } else {
    return false;
  }
  end = p;
  return true;
}

// The raw text up to {% endraw %}, whose own whitespace control applies as for any block tag.
void Lexer::raw() {
  std::size_t p = pos_;
  while ((p = s_.find("{%", p)) != std::string::npos) {
    std::size_t q = p + 2;
    char sign = q < s_.size() && (s_[q] == '-' || s_[q] == '+') ? s_[q++] : 0;
    q += space_run(s_, q);
    if (starts(s_, q, "endraw")) {
      q += 6;
      q += space_run(s_, q);
      std::size_t end = 0;
      if (starts(s_, q, "+%}")) {
        end = q + 3;
      } else if (starts(s_, q, "-%}")) {
        end = q + 3 + space_run(s_, q + 3);
      } else if (starts(s_, q, "%}")) {
        end = q + 2 + (q + 2 < s_.size() && s_[q + 2] == '\n' ? 1 : 0);
      }
      if (end) {
        data(pos_, p, sign, true);
        line_ += count_newlines(s_, p, end);
        line_starting_ = s_[end - 1] == '\n';
        pos_ = end;
        return;
      }
    }
    p += 2;
  }
  template_error(line_, "Missing end of raw directive");
}

// Inside {{ }} or {% %}: names, literals and operators up to the closing tag. A `}}` or `%}` closes
// only when brackets are balanced, so `{{ {'a': {'b': 1}} }}` works as in Jinja.
void Lexer::tag(Tag kind) {
  push(kind == Tag::Var ? Tok::VarBegin : Tok::BlockBegin);
  std::vector<char> balance;
  static const char* const ops[] = {"**", "//", "==", "!=", ">=", "<=", "+", "-", "/", "*", "%", "~", "[",
                                    "]",  "(",  ")",  "{",  "}",  ">",  "<", "=", ".", ":", "|", ",", ";"};
  for (;;) {
    if (pos_ >= s_.size()) template_error(line_, "unexpected end of template inside a tag");
    if (balance.empty()) {
      std::size_t end = 0;
      if (kind == Tag::Block) {
        if (starts(s_, pos_, "+%}"))
          end = pos_ + 3;
        else if (starts(s_, pos_, "-%}"))
          end = pos_ + 3 + space_run(s_, pos_ + 3);
        else if (starts(s_, pos_, "%}"))
          end = pos_ + 2 + (pos_ + 2 < s_.size() && s_[pos_ + 2] == '\n' ? 1 : 0);
      } else {
        if (starts(s_, pos_, "-}}"))
          end = pos_ + 3 + space_run(s_, pos_ + 3);
        else if (starts(s_, pos_, "}}"))
          end = pos_ + 2;
      }
      if (end) {
        push(kind == Tag::Var ? Tok::VarEnd : Tok::BlockEnd);
        line_ += count_newlines(s_, pos_, end);
        line_starting_ = s_[end - 1] == '\n';
        pos_ = end;
        return;
      }
    }
    char c = s_[pos_];
    if (std::size_t ws = space_run(s_, pos_)) {
      line_ += count_newlines(s_, pos_, pos_ + ws);
      pos_ += ws;
    } else if (is_digit(c)) {
      number();
    } else if (is_name_start(c)) {
      std::size_t b = pos_;
      while (pos_ < s_.size() && is_name_char(s_[pos_])) ++pos_;
      push(Tok::Name, s_.substr(b, pos_ - b));
    } else if (c == '\'' || c == '"') {
      string_literal();
    } else {
      const char* op = nullptr;
      for (const char* candidate : ops)
        if (starts(s_, pos_, candidate)) {
          op = candidate;
          break;
        }
      if (!op) template_error(line_, std::string("unexpected char '") + c + "'");
      if (std::strchr("([{", op[0]) && op[1] == 0) balance.push_back(op[0] == '(' ? ')' : op[0] == '[' ? ']' : '}');
      if (std::strchr(")]}", op[0]) && op[1] == 0) {
        if (balance.empty()) template_error(line_, std::string("unexpected '") + op + "'");
        if (balance.back() != op[0])
          template_error(line_, std::string("unexpected '") + op + "', expected '" + balance.back() + "'");
        balance.pop_back();
      }
      push(Tok::Op, op);
      pos_ += std::strlen(op);
    }
  }
}

// Jinja's float_re (digits with `_`, a fraction and/or an exponent) before its integer_re (0b / 0o /
// 0x / decimal); a number right after a `.` is never a float, so `x.0.1` is two subscripts.
void Lexer::number() {
  auto digits = [&](std::size_t p) {  // (\d+_)*\d+ at p: its end, or p if none
    std::size_t q = p;
    while (q < s_.size() && (is_digit(s_[q]) || (s_[q] == '_' && q > p && q + 1 < s_.size() && is_digit(s_[q + 1]))))
      ++q;
    return q;
  };
  std::size_t b = pos_, int_end = digits(b), p = int_end;
  bool after_dot = b > 0 && s_[b - 1] == '.';
  bool is_float = false;
  if (!after_dot) {
    if (p + 1 < s_.size() && s_[p] == '.' && is_digit(s_[p + 1])) {
      p = digits(p + 1);
      is_float = true;
    }
    if (p < s_.size() && (s_[p] == 'e' || s_[p] == 'E')) {
      std::size_t q = p + 1;
      if (q < s_.size() && (s_[q] == '+' || s_[q] == '-')) ++q;
      if (q < s_.size() && is_digit(s_[q])) {
        p = digits(q);
        is_float = true;
      } else if (!is_float) {
        p = int_end;
      }
    }
  }
  std::string text;
  Token tok{Tok::Int, {}, line_};
  if (is_float) {
    for (std::size_t i = b; i < p; ++i)
      if (s_[i] != '_') text += s_[i];
    tok.type = Tok::Float;
    tok.fval = std::strtod(text.c_str(), nullptr);
    pos_ = p;
  } else {
    int base = 10;
    std::size_t q = b;
    if (s_[b] == '0' && b + 1 < s_.size() && std::strchr("bBoOxX", s_[b + 1])) {
      char k = s_[b + 1] | 0x20;
      base = k == 'b' ? 2 : k == 'o' ? 8 : 16;
      q = b + 2;
      auto ok = [&](char ch) {
        return base == 16 ? std::isxdigit(static_cast<unsigned char>(ch)) != 0 : ch >= '0' && ch < '0' + base;
      };
      while (q < s_.size() && (ok(s_[q]) || (s_[q] == '_' && q + 1 < s_.size() && ok(s_[q + 1])))) {
        if (s_[q] != '_') text += s_[q];
        ++q;
      }
      if (text.empty()) template_error(line_, "invalid number literal");
    } else if (s_[b] == '0') {  // 0(_?0)*: a leading zero takes only zeros
      while (q < s_.size() && (s_[q] == '0' || (s_[q] == '_' && q + 1 < s_.size() && s_[q + 1] == '0'))) ++q;
      text = "0";
    } else {
      q = int_end;
      for (std::size_t i = b; i < q; ++i)
        if (s_[i] != '_') text += s_[i];
    }
    errno = 0;
    unsigned long long v = std::strtoull(text.c_str(), nullptr, base);
    if (errno == ERANGE || v > static_cast<unsigned long long>(INT64_MAX))
      template_error(line_, "integer literal " + text + " is beyond 64 bits");
    tok.ival = static_cast<std::int64_t>(v);
    pos_ = q;
  }
  out_.push_back(tok);
}

// Python's unicode-escape decoding of the literal's body; an unknown escape such as \d stays as is.
void Lexer::string_literal() {
  char quote = s_[pos_];
  std::size_t p = pos_ + 1;
  std::string value;
  int start_line = line_;
  for (;;) {
    if (p >= s_.size())
      template_error(start_line, "unexpected char '" + std::string(1, quote) + "' (an unterminated string)");
    char c = s_[p];
    if (c == quote) break;
    if (c == '\n') ++line_;
    if (c != '\\') {
      value += c;
      ++p;
      continue;
    }
    if (p + 1 >= s_.size()) template_error(start_line, "an unterminated string");
    char e = s_[p + 1];
    p += 2;
    auto hex = [&](int n) {
      if (p + n > s_.size()) template_error(line_, "truncated \\x / \\u escape in a string");
      char32_t v = 0;
      for (int i = 0; i < n; ++i) {
        char h = s_[p + i];
        if (!std::isxdigit(static_cast<unsigned char>(h)))
          template_error(line_, "truncated \\x / \\u escape in a string");
        v = v * 16 + (h <= '9' ? h - '0' : (h | 0x20) - 'a' + 10);
      }
      p += n;
      if (v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff))
        template_error(line_, "an escape in a string is not a Unicode character");
      utf8_append(value, v);
    };
    switch (e) {
      case '\n':
        ++line_;
        break;  // a line continuation
      case '\\':
        value += '\\';
        break;
      case '\'':
        value += '\'';
        break;
      case '"':
        value += '"';
        break;
      case 'a':
        value += '\a';
        break;
      case 'b':
        value += '\b';
        break;
      case 'f':
        value += '\f';
        break;
      case 'n':
        value += '\n';
        break;
      case 'r':
        value += '\r';
        break;
      case 't':
        value += '\t';
        break;
      case 'v':
        value += '\v';
        break;
      case 'x':
        hex(2);
        break;
      case 'u':
        hex(4);
        break;
      case 'U':
        hex(8);
        break;
      default:
        if (e >= '0' && e <= '7') {  // up to three octal digits
          char32_t v = e - '0';
          for (int i = 0; i < 2 && p < s_.size() && s_[p] >= '0' && s_[p] <= '7'; ++i) v = v * 8 + (s_[p++] - '0');
          utf8_append(value, v);
        } else {
          value += '\\';
          p -= 1;  // the character after the backslash is read as ordinary text
        }
    }
  }
  out_.push_back(Token{Tok::String, std::move(value), start_line});
  pos_ = p + 1;
}

}  // namespace

std::vector<Token> tokenize(const std::string& source) {
  if (!utf8_valid(source)) template_error(1, "the template is not valid UTF-8");
  // \r\n and \r are newlines; one trailing newline is dropped (keep_trailing_newline=False).
  std::string s;
  s.reserve(source.size());
  for (std::size_t i = 0; i < source.size(); ++i) {
    if (source[i] == '\r') {
      s += '\n';
      if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
    } else {
      s += source[i];
    }
  }
  if (!s.empty() && s.back() == '\n') s.pop_back();
  return Lexer(std::move(s)).run();
}

}  // namespace linearnexus::jinja
