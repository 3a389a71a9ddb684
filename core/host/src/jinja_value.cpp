// Python's behaviours for the chat-template values (jinja_value.h).
#include "jinja_value.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>

namespace linearnexus::jinja {

void fail(const std::string& message) { throw Failure(message); }

void Budget::over_steps() const {
  fail("the template ran too long (more than " + std::to_string(max_steps) + " evaluation steps)");
}

Value Value::undefined(std::string what) {
  return Value{Undefined{std::make_shared<const std::string>(std::move(what))}};
}

Value Value::text(std::string s) {
  auto str = std::make_shared<Str>();
  str->s = std::move(s);
  return Value{StrPtr(std::move(str))};
}

const Value& Value::defined() const {
  if (is_undefined()) {
    const auto& what = std::get<Undefined>(v).what;
    fail(what ? *what : "an undefined value was used");
  }
  return *this;
}

const Value* Dict::find(std::string_view key) const {
  if (!index_.empty()) {
    auto it = index_.find(std::string(key));
    return it == index_.end() ? nullptr : &items[it->second].second;
  }
  for (const auto& [k, val] : items)
    if (k == key) return &val;
  return nullptr;
}

void Dict::set(std::string key, Value value) {
  // Linear search while small (chat messages have a handful of keys); an index once large, so a
  // hostile context with many keys cannot make each lookup slow.
  if (auto* found = const_cast<Value*>(find(key))) {
    *found = std::move(value);
    return;
  }
  items.emplace_back(std::move(key), std::move(value));
  if (items.size() == 16)
    for (std::size_t i = 0; i < items.size(); ++i) index_.emplace(items[i].first, i);
  else if (items.size() > 16)
    index_.emplace(items.back().first, items.size() - 1);
}

static int child_depth(const Value& v) {
  if (v.is(Type::List)) return v.list().depth;
  if (v.is(Type::Dict)) return v.dict().depth;
  return 0;
}

static void check_depth(int depth, const Budget& budget) {
  if (depth > budget.max_value_depth)
    fail("values nested more than " + std::to_string(budget.max_value_depth) + " levels deep");
}

Value make_list(std::vector<Value> items, List::Kind kind, const Budget& budget) {
  if (items.size() > budget.max_string / 16)
    fail("a list grew past " + std::to_string(budget.max_string / 16) + " items");
  auto list = std::make_shared<List>();
  for (const auto& item : items) list->depth = std::max(list->depth, child_depth(item) + 1);
  check_depth(list->depth, budget);
  list->items = std::move(items);
  list->kind = kind;
  return Value{ListPtr(std::move(list))};
}

Value make_dict(Dict dict, const Budget& budget) {
  for (const auto& item : dict.items) dict.depth = std::max(dict.depth, child_depth(item.second) + 1);
  check_depth(dict.depth, budget);
  return Value{DictPtr(std::make_shared<const Dict>(std::move(dict)))};
}

// ---- UTF-8 ----

char32_t utf8_next(std::string_view s, std::size_t& i) {
  auto b = static_cast<unsigned char>(s[i]);
  int n = b < 0x80 ? 0 : (b >> 5) == 6 ? 1 : (b >> 4) == 14 ? 2 : (b >> 3) == 30 ? 3 : -1;
  if (n == 0) {
    ++i;
    return b;
  }
  if (n < 0 || i + n >= s.size()) {  // an invalid lead byte, or a sequence cut short by the end
    ++i;
    return b;
  }
  char32_t c = b & (0x3f >> n);
  for (int k = 1; k <= n; ++k) {
    auto cont = static_cast<unsigned char>(s[i + k]);
    if ((cont & 0xc0) != 0x80) {
      ++i;
      return b;
    }
    c = (c << 6) | (cont & 0x3f);
  }
  i += n + 1;
  return c;
}

std::size_t utf8_length(std::string_view s) {
  std::size_t n = 0;
  for (std::size_t i = 0; i < s.size(); ++n) utf8_next(s, i);
  return n;
}

std::vector<std::size_t> utf8_offsets(std::string_view s) {
  std::vector<std::size_t> out;
  for (std::size_t i = 0; i < s.size();) {
    out.push_back(i);
    utf8_next(s, i);
  }
  out.push_back(s.size());
  return out;
}

void utf8_append(std::string& out, char32_t c) {
  if (c < 0x80) {
    out += static_cast<char>(c);
  } else if (c < 0x800) {
    out += static_cast<char>(0xc0 | (c >> 6));
    out += static_cast<char>(0x80 | (c & 0x3f));
  } else if (c < 0x10000) {
    out += static_cast<char>(0xe0 | (c >> 12));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3f));
    out += static_cast<char>(0x80 | (c & 0x3f));
  } else {
    out += static_cast<char>(0xf0 | (c >> 18));
    out += static_cast<char>(0x80 | ((c >> 12) & 0x3f));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3f));
    out += static_cast<char>(0x80 | (c & 0x3f));
  }
}

bool utf8_valid(std::string_view s) {
  for (std::size_t i = 0; i < s.size();) {
    std::size_t before = i;
    char32_t c = utf8_next(s, i);
    bool single = i == before + 1;
    if (single && c >= 0x80) return false;  // a byte that decoded as itself
    if (c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff)) return false;
    std::size_t len = i - before;  // overlong encodings
    if ((len == 2 && c < 0x80) || (len == 3 && c < 0x800) || (len == 4 && c < 0x10000)) return false;
  }
  return true;
}

bool py_isspace(char32_t c) {
  return (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x20) || c == 0x85 || c == 0xa0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f || c == 0x205f || c == 0x3000;
}

// ---- StrBuilder ----

void StrBuilder::reserve_more(std::size_t n) {
  if (out_.s.size() + n > max_) fail("a string grew past " + std::to_string(max_) + " bytes");
  budget_->charge_bytes(n);
}

void StrBuilder::push_span(Span s) {
  if (s.end <= s.begin) return;
  // Pieces of one source string copied back to back, in order, are one copy (a string built char by
  // char, or copied through several captures). Anything else stays a separate span, so a span is
  // always a substring of its source; generation blocks are never merged (each is one of HF's spans).
  for (auto it = out_.spans.rbegin(); it != out_.spans.rend(); ++it) {
    if (it->kind != s.kind) continue;
    if (s.kind == Span::Content && it->message == s.message && it->source == s.source && it->end == s.begin &&
        it->offset + (it->end - it->begin) == s.offset) {
      it->end = s.end;
      return;
    }
    break;
  }
  out_.spans.push_back(s);
}

void StrBuilder::lit(std::string_view text) {
  reserve_more(text.size());
  out_.s.append(text);
}

void StrBuilder::copy(const Str& src, std::size_t begin, std::size_t end) {
  end = std::min(end, src.s.size());
  if (begin >= end) return;
  reserve_more(end - begin);
  std::size_t at = out_.s.size();
  out_.s.append(src.s, begin, end - begin);
  budget_->charge(src.spans.size());
  for (const Span& span : src.spans) {
    std::size_t b = std::max(span.begin, begin), e = std::min(span.end, end);
    if (b < e)
      push_span(
          Span{b - begin + at, e - begin + at, span.message, span.kind, span.source, span.offset + (b - span.begin)});
  }
}

void StrBuilder::tag(std::size_t begin, Span::Kind kind, int message) {
  if (begin < out_.s.size()) out_.spans.push_back(Span{begin, out_.s.size(), message, kind, 0, 0});
}

StrPtr StrBuilder::done() { return std::make_shared<const Str>(std::move(out_)); }

// ---- Python behaviours ----

const char* type_name(const Value& v) {
  switch (v.type()) {
    case Type::Undefined:
      return "Undefined";
    case Type::None:
      return "NoneType";
    case Type::Bool:
      return "bool";
    case Type::Int:
      return "int";
    case Type::Float:
      return "float";
    case Type::Str:
      return "str";
    case Type::List:
      return v.list().kind == List::Tuple ? "tuple" : v.list().kind == List::Iterator ? "generator" : "list";
    case Type::Dict:
      return "dict";
    case Type::Namespace:
      return "Namespace";
    case Type::Callable:
      return "function";
  }
  return "object";
}

bool truthy(const Value& v) {
  switch (v.type()) {
    case Type::Undefined:
    case Type::None:
      return false;
    case Type::Bool:
      return std::get<bool>(v.v);
    case Type::Int:
      return std::get<std::int64_t>(v.v) != 0;
    case Type::Float:
      return std::get<double>(v.v) != 0.0;
    case Type::Str:
      return !v.str().s.empty();
    case Type::List:
      return v.list().kind == List::Iterator || !v.list().items.empty();
    case Type::Dict:
      return !v.dict().items.empty();
    default:
      return true;
  }
}

static bool num_equals(const Value& a, const Value& b) {
  if (a.is_int() && b.is_int()) return a.as_int() == b.as_int();
  double x = a.as_double(), y = b.as_double();
  if (x != y) return false;
  // A double equal to an int64's (rounded) conversion is only equal when the int is exact.
  if (a.is_int()) return std::abs(y) < 9.2e18 && static_cast<std::int64_t>(y) == a.as_int();
  if (b.is_int()) return std::abs(x) < 9.2e18 && static_cast<std::int64_t>(x) == b.as_int();
  return true;
}

bool equals(const Value& a, const Value& b, int depth) {
  if (depth > 200) fail("values nested too deeply to compare");
  if (a.is_number() && b.is_number()) return num_equals(a, b);
  if (a.type() != b.type()) return false;
  switch (a.type()) {
    case Type::Undefined:
    case Type::None:
      return true;
    case Type::Str:
      return a.str().s == b.str().s;
    case Type::List: {
      const List &x = a.list(), &y = b.list();
      if (x.kind == List::Iterator || y.kind == List::Iterator) return &x == &y;
      if (x.kind != y.kind || x.items.size() != y.items.size()) return false;
      for (std::size_t i = 0; i < x.items.size(); ++i)
        if (!equals(x.items[i], y.items[i], depth + 1)) return false;
      return true;
    }
    case Type::Dict: {
      const Dict &x = a.dict(), &y = b.dict();
      if (x.items.size() != y.items.size()) return false;
      for (const auto& [k, val] : x.items) {
        const Value* other = y.find(k);
        if (!other || !equals(val, *other, depth + 1)) return false;
      }
      return true;
    }
    case Type::Namespace:
      return std::get<NsPtr>(a.v) == std::get<NsPtr>(b.v);
    case Type::Callable:
      return std::get<FnPtr>(a.v) == std::get<FnPtr>(b.v);
    default:
      return false;
  }
}

int compare(const Value& a, const Value& b, int depth) {
  a.defined();
  b.defined();
  if (depth > 200) fail("values nested too deeply to compare");
  if (a.is_number() && b.is_number()) {
    if (num_equals(a, b)) return 0;
    if (a.is_int() && b.is_int()) return a.as_int() < b.as_int() ? -1 : 1;
    return a.as_double() < b.as_double() ? -1 : 1;
  }
  if (a.is_str() && b.is_str()) {
    int c = a.str().s.compare(b.str().s);  // UTF-8 byte order is code point order
    return c < 0 ? -1 : c > 0 ? 1 : 0;
  }
  if (a.is(Type::List) && b.is(Type::List) && a.list().kind == b.list().kind && a.list().kind != List::Iterator) {
    const auto &x = a.list().items, &y = b.list().items;
    for (std::size_t i = 0; i < x.size() && i < y.size(); ++i)
      if (!equals(x[i], y[i], depth + 1)) return compare(x[i], y[i], depth + 1);
    return x.size() < y.size() ? -1 : x.size() > y.size() ? 1 : 0;
  }
  fail(std::string("'<' not supported between instances of '") + type_name(a) + "' and '" + type_name(b) + "'");
}

std::string py_float(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d < 0 ? "-inf" : "inf";
  // Shortest round-trip digits (as Python's repr), then Python's layout: positional when the
  // decimal point falls within -4 < decpt <= 16, else d.ddde+XX with at least two exponent digits.
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof buf, d, std::chars_format::scientific);
  std::string sci(buf, res.ptr);
  std::string out = sci[0] == '-' ? "-" : "";
  std::size_t epos = sci.find('e');
  std::string digits;
  for (std::size_t i = out.size(); i < epos; ++i)
    if (sci[i] != '.') digits += sci[i];
  int exp10 = std::stoi(sci.substr(epos + 1));
  int decpt = exp10 + 1;
  int n = static_cast<int>(digits.size());
  if (decpt > -4 && decpt <= 16) {
    if (decpt <= 0) return out + "0." + std::string(-decpt, '0') + digits;
    if (decpt >= n) return out + digits + std::string(decpt - n, '0') + ".0";
    return out + digits.substr(0, decpt) + "." + digits.substr(decpt);
  }
  out += digits.substr(0, 1);
  if (n > 1) out += "." + digits.substr(1);
  int e = decpt - 1;
  std::string es = std::to_string(std::abs(e));
  if (es.size() < 2) es = "0" + es;
  return out + "e" + (e < 0 ? "-" : "+") + es;
}

// Python's str.isprintable, close enough for the characters chat data holds: control characters,
// separators and format characters (soft hyphen, zero-width and direction marks, BOM) are not.
static bool py_printable(char32_t c) {
  if (c < 0x20 || (c >= 0x7f && c <= 0xa0) || c == 0xad) return false;
  if (c == 0x1680 || c == 0x180e || (c >= 0x2000 && c <= 0x200f) || (c >= 0x2028 && c <= 0x202f)) return false;
  if ((c >= 0x205f && c <= 0x206f) || c == 0x3000 || c == 0xfeff || (c >= 0xfff9 && c <= 0xfffb)) return false;
  if ((c >= 0x600 && c <= 0x605) || c == 0x61c || c == 0x6dd || c == 0x70f) return false;
  if ((c >= 0xd800 && c <= 0xf8ff) || c >= 0xf0000) return false;  // surrogates, private use
  return true;
}

static void repr_string(std::string& out, std::string_view s) {
  bool has_single = s.find('\'') != std::string_view::npos, has_double = s.find('"') != std::string_view::npos;
  char quote = has_single && !has_double ? '"' : '\'';
  out += quote;
  for (std::size_t i = 0; i < s.size();) {
    char32_t c = utf8_next(s, i);
    char buf[16];
    if (c == static_cast<char32_t>(quote) || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c == '\t') {
      out += "\\t";
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (py_printable(c)) {
      utf8_append(out, c);
    } else {
      std::snprintf(buf, sizeof buf, c < 0x100 ? "\\x%02x" : c < 0x10000 ? "\\u%04x" : "\\U%08x", unsigned(c));
      out += buf;
    }
  }
  out += quote;
}

static void repr_into(std::string& out, const Value& v, Budget& budget, int depth) {
  if (depth > 100) fail("a value nested too deeply (or containing itself) to print");
  budget.charge(1);
  if (out.size() > budget.max_string) fail("a string grew past " + std::to_string(budget.max_string) + " bytes");
  switch (v.type()) {
    case Type::Undefined:
      out += "Undefined";
      return;
    case Type::Str:
      repr_string(out, v.str().s);
      return;
    case Type::List: {
      const List& l = v.list();
      if (l.kind == List::Iterator) {
        out += "<generator object>";
        return;
      }
      out += l.kind == List::Tuple ? '(' : '[';
      for (std::size_t i = 0; i < l.items.size(); ++i) {
        if (i) out += ", ";
        repr_into(out, l.items[i], budget, depth + 1);
      }
      if (l.kind == List::Tuple && l.items.size() == 1) out += ',';
      out += l.kind == List::Tuple ? ')' : ']';
      return;
    }
    case Type::Dict:
    case Type::Namespace: {
      const Dict& d = v.is(Type::Dict) ? v.dict() : std::get<NsPtr>(v.v)->attrs;
      if (v.is(Type::Namespace)) out += "<Namespace ";
      out += '{';
      for (std::size_t i = 0; i < d.items.size(); ++i) {
        if (i) out += ", ";
        repr_string(out, d.items[i].first);
        out += ": ";
        repr_into(out, d.items[i].second, budget, depth + 1);
      }
      out += '}';
      if (v.is(Type::Namespace)) out += '>';
      return;
    }
    default:
      out += py_str(v, budget)->s;
      return;
  }
}

std::string py_repr(const Value& v, Budget& budget) {
  std::string out;
  repr_into(out, v, budget, 0);
  budget.charge_bytes(out.size());
  return out;
}

StrPtr py_str(const Value& v, Budget& budget) {
  switch (v.type()) {
    case Type::Str:
      return v.str_ptr();
    case Type::Undefined:
      return Value::text("").str_ptr();
    case Type::None:
      return Value::text("None").str_ptr();
    case Type::Bool:
      return Value::text(std::get<bool>(v.v) ? "True" : "False").str_ptr();
    case Type::Int:
      return Value::text(std::to_string(std::get<std::int64_t>(v.v))).str_ptr();
    case Type::Float:
      return Value::text(py_float(std::get<double>(v.v))).str_ptr();
    case Type::Callable:
      return Value::text("<function " + std::get<FnPtr>(v.v)->name + ">").str_ptr();
    default:
      return Value::text(py_repr(v, budget)).str_ptr();
  }
}

}  // namespace linearnexus::jinja
