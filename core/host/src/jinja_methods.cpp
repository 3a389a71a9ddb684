// Methods and globals of the chat-template interpreter (jinja_methods.h).
#include "jinja_methods.h"

#include <algorithm>
#include <cstdio>
#include <ctime>

#include "jinja_ops.h"

namespace linearnexus::jinja {
namespace {

// ---- Unicode case, for the scripts chat data mostly uses ----
char32_t to_upper(char32_t c) {
  if (c >= 'a' && c <= 'z') return c - 32;
  if ((c >= 0xe0 && c <= 0xfe && c != 0xf7)) return c - 32;
  if (c == 0xff) return 0x178;
  if (c >= 0x100 && c <= 0x17f && c != 0x130 && c != 0x131 && c != 0x138 && c != 0x149 && c != 0x17f) {
    bool odd_lower = (c <= 0x137) || (c >= 0x14a && c <= 0x177);
    if (odd_lower ? (c & 1) : !(c & 1) && c != 0x178) return c - 1;
  }
  if (c >= 0x3b1 && c <= 0x3c9 && c != 0x3c2) return c - 32;
  if (c >= 0x430 && c <= 0x44f) return c - 32;
  if (c >= 0x450 && c <= 0x45f) return c - 80;
  return c;
}

char32_t to_lower(char32_t c) {
  if (c >= 'A' && c <= 'Z') return c + 32;
  if (c >= 0xc0 && c <= 0xde && c != 0xd7) return c + 32;
  if (c == 0x178) return 0xff;
  if (c >= 0x100 && c <= 0x17f && c != 0x130 && c != 0x131 && c != 0x138 && c != 0x149 && c != 0x17f) {
    bool even_upper = (c <= 0x137) || (c >= 0x14a && c <= 0x177);
    if (even_upper ? !(c & 1) : (c & 1)) return c + 1;
  }
  if (c >= 0x391 && c <= 0x3a9 && c != 0x3a2) return c + 32;
  if (c >= 0x410 && c <= 0x42f) return c + 32;
  if (c >= 0x400 && c <= 0x40f) return c + 80;
  return c;
}

bool is_cased(char32_t c) { return to_upper(c) != c || to_lower(c) != c || c == 0xdf || c == 0x138; }
bool is_upper(char32_t c) { return to_lower(c) != c; }
bool is_lower(char32_t c) { return to_upper(c) != c || c == 0xdf; }
bool is_alpha(char32_t c) { return is_cased(c) || (c >= 0x4e00 && c <= 0x9fff) || (c >= 0x3040 && c <= 0x30ff); }
bool is_digit(char32_t c) { return c >= '0' && c <= '9'; }

std::vector<char32_t> code_points(std::string_view s) {
  std::vector<char32_t> out;
  for (std::size_t i = 0; i < s.size();) out.push_back(utf8_next(s, i));
  return out;
}

const Str& need_str(const Value& v, const char* what) {
  if (!v.is_str()) fail(std::string(what) + " must be str, not " + type_name(v));
  return v.str();
}

// A code-point index (Python's start / end arguments) as a byte offset into s, clamped.
std::size_t byte_at(const std::vector<std::size_t>& offsets, const Value* index, std::size_t fallback) {
  if (!index || index->is_none()) return fallback;
  std::int64_t n = std::int64_t(offsets.size()) - 1, i = index->defined().as_int();
  if (i < 0) i = std::max<std::int64_t>(0, i + n);
  return offsets[std::min(i, n)];
}

std::int64_t cp_index(std::string_view s, std::size_t byte) { return std::int64_t(utf8_length(s.substr(0, byte))); }

Value str_method(Evaluator& ev, const Value& self, const std::string& m, CallArgs& args) {
  const Str& s = self.str();
  if (m == "strip" || m == "lstrip" || m == "rstrip") {
    Args a(m, args, {"chars"});
    return Value::string(strip(ev, s, a.get(0), m != "rstrip", m != "lstrip"));
  }
  if (m == "split" || m == "rsplit") {
    Args a(m, args, {"sep", "maxsplit"});
    return split(ev, s, a.get_or(0, Value::none()), a.get_or(1, Value::integer(-1)).defined().as_int(), m == "rsplit");
  }
  if (m == "splitlines") {
    Args a(m, args, {"keepends"});
    bool keep = truthy(a.get_or(0, Value::boolean(false)));
    auto lines = split_lines(s.s);
    std::vector<Value> out;
    for (std::size_t i = 0; i < lines.size(); ++i) {
      std::size_t end = keep ? (i + 1 < lines.size() ? lines[i + 1].first : s.s.size()) : lines[i].second;
      out.push_back(substring(ev, s, lines[i].first, end));
    }
    return ev.list(std::move(out));
  }
  if (m == "startswith" || m == "endswith") {
    Args a(m, args, {"prefix", "start", "end"});
    const Value& what = a.required(0);
    auto offsets = utf8_offsets(s.s);
    std::size_t b = byte_at(offsets, a.get(1), 0), e = byte_at(offsets, a.get(2), s.s.size());
    std::string_view body = b <= e ? std::string_view(s.s).substr(b, e - b) : std::string_view();
    auto test = [&](const Value& p) {
      const std::string& x = need_str(p, m == "startswith" ? "startswith first arg" : "endswith first arg").s;
      if (b > e || x.size() > body.size()) return false;
      return m == "startswith" ? body.compare(0, x.size(), x) == 0
                               : body.compare(body.size() - x.size(), x.size(), x) == 0;
    };
    if (what.is(Type::List) && what.list().kind == List::Tuple) {
      for (const Value& p : what.list().items)
        if (test(p)) return Value::boolean(true);
      return Value::boolean(false);
    }
    return Value::boolean(test(what));
  }
  if (m == "replace") {
    Args a(m, args, {"old", "new", "count"});
    const Value& old_v = a.required(0);
    const Value& new_v = a.required(1);
    return Value::string(replace(ev, s, need_str(old_v, "replace() argument 1"),
                                 need_str(new_v, "replace() argument 2"),
                                 a.get_or(2, Value::integer(-1)).defined().as_int()));
  }
  if (m == "upper" || m == "lower" || m == "title" || m == "capitalize") {
    Args a(m, args, {});
    return Value::text(case_map(s.s, m == "upper" ? 'u' : m == "lower" ? 'l' : m == "title" ? 't' : 'c'));
  }
  if (m == "find" || m == "rfind" || m == "index" || m == "rindex" || m == "count") {
    Args a(m, args, {"sub", "start", "end"});
    const std::string& sub = need_str(a.required(0), "substring").s;
    auto offsets = utf8_offsets(s.s);
    std::size_t b = byte_at(offsets, a.get(1), 0), e = byte_at(offsets, a.get(2), s.s.size());
    std::string_view body = b <= e ? std::string_view(s.s).substr(b, e - b) : std::string_view();
    if (m == "count") {
      if (b > e) return Value::integer(0);
      if (sub.empty()) return Value::integer(std::int64_t(utf8_length(body)) + 1);
      std::int64_t n = 0;
      for (std::size_t p = body.find(sub); p != std::string_view::npos; p = body.find(sub, p + sub.size())) ++n;
      return Value::integer(n);
    }
    std::size_t p = b > e ? std::string_view::npos : (m[0] == 'r' ? body.rfind(sub) : body.find(sub));
    if (p == std::string_view::npos) {
      if (m == "index" || m == "rindex") fail("substring not found");
      return Value::integer(-1);
    }
    return Value::integer(cp_index(s.s, b + p));
  }
  if (m == "join") {
    Args a(m, args, {"iterable"});
    StrBuilder out = ev.builder();
    std::size_t i = 0;
    for (const Value& item : iterate(ev, a.get_or(0, Value::none()))) {
      if (!item.is_str())
        fail("sequence item " + std::to_string(i) + ": expected str instance, " + type_name(item) + " found");
      if (i++) out.add(s);
      out.add(item.str());
    }
    return Value::string(out.done());
  }
  if (m == "removeprefix" || m == "removesuffix") {
    Args a(m, args, {"affix"});
    const std::string& x = need_str(a.required(0), m.c_str()).s;
    bool pre = m == "removeprefix";
    if (x.size() <= s.s.size() &&
        (pre ? s.s.compare(0, x.size(), x) == 0 : s.s.compare(s.s.size() - x.size(), x.size(), x) == 0))
      return pre ? substring(ev, s, x.size(), s.s.size()) : substring(ev, s, 0, s.s.size() - x.size());
    return self;
  }
  if (m == "isdigit" || m == "isalpha" || m == "isalnum" || m == "isspace" || m == "islower" || m == "isupper") {
    Args a(m, args, {});
    auto cps = code_points(s.s);
    if (cps.empty()) return Value::boolean(false);
    if (m == "islower" || m == "isupper") {
      bool any = false;
      for (char32_t c : cps) {
        if (m == "islower" ? is_upper(c) : is_lower(c)) return Value::boolean(false);
        any = any || is_cased(c);
      }
      return Value::boolean(any);
    }
    for (char32_t c : cps) {
      bool ok = m == "isdigit"   ? is_digit(c)
                : m == "isalpha" ? is_alpha(c)
                : m == "isspace" ? py_isspace(c)
                                 : is_alpha(c) || is_digit(c);
      if (!ok) return Value::boolean(false);
    }
    return Value::boolean(true);
  }
  fail("str." + m + " is not supported");
}

Value dict_method(Evaluator& ev, const Dict& d, const std::string& m, CallArgs& args) {
  if (m == "get") {
    Args a(m, args, {"key", "default"});
    const Value& key = a.required(0);
    if (key.is_str())
      if (const Value* v = d.find(key.str().s)) return *v;
    return a.get_or(1, Value::none());
  }
  Args a(m, args, {});
  std::vector<Value> out;
  ev.budget.charge(d.items.size());
  for (const auto& [k, v] : d.items) {
    if (m == "keys") out.push_back(Value::text(k));
    if (m == "values") out.push_back(v);
    if (m == "items") out.push_back(ev.list({Value::text(k), v}, List::Tuple));
  }
  return ev.list(std::move(out));
}

}  // namespace

Value bound_method(Evaluator& ev, const Value& obj, const std::string& name) {
  (void)ev;
  static const char* const str_methods[] = {
      "strip",    "lstrip",  "rstrip",  "split",   "rsplit",  "splitlines",   "startswith",
      "endswith", "replace", "upper",   "lower",   "title",   "capitalize",   "find",
      "rfind",    "index",   "rindex",  "count",   "join",    "removeprefix", "removesuffix",
      "isdigit",  "isalpha", "isalnum", "isspace", "islower", "isupper"};
  bool found = false;
  if (obj.is_str()) {
    for (const char* m : str_methods) found = found || name == m;
  } else if (obj.is(Type::Dict)) {
    found = name == "get" || name == "items" || name == "keys" || name == "values";
  } else if (obj.is(Type::List) && obj.list().kind != List::Iterator) {
    found = name == "index" || name == "count";
  }
  if (!found) return Value::undefined(std::string("'") + type_name(obj) + " object' has no attribute '" + name + "'");
  auto fn = std::make_shared<Callable>();
  fn->name = name;
  fn->fn = [self = obj, name](Evaluator& e, CallArgs& args) -> Value {
    if (self.is_str()) return str_method(e, self, name, args);
    if (self.is(Type::Dict)) return dict_method(e, self.dict(), name, args);
    Args a(name, args, {"value"});
    const Value& needle = a.required(0);
    std::int64_t n = 0, i = 0;
    for (const Value& item : self.list().items) {
      if (equals(item, needle)) {
        if (name == "index") return Value::integer(i);
        ++n;
      }
      ++i;
    }
    if (name == "index") fail("list.index(x): x not in list");
    return Value::integer(n);
  };
  return Value{FnPtr(std::move(fn))};
}

StrPtr strip(Evaluator& ev, const Str& s, const Value* chars, bool left, bool right) {
  std::vector<char32_t> set;
  bool whitespace = !chars || chars->is_none();
  if (!whitespace) set = code_points(need_str(chars->defined(), "strip arg").s);
  auto strip_it = [&](char32_t c) {
    return whitespace ? py_isspace(c) : std::find(set.begin(), set.end(), c) != set.end();
  };
  auto offsets = utf8_offsets(s.s);
  std::size_t b = 0, e = offsets.size() - 1;
  auto cp = [&](std::size_t k) {
    std::size_t at = offsets[k];
    return utf8_next(s.s, at);
  };
  while (left && b < e && strip_it(cp(b))) ++b;
  while (right && e > b && strip_it(cp(e - 1))) --e;
  return substring(ev, s, offsets[b], offsets[e]).str_ptr();
}

Value split(Evaluator& ev, const Str& s, const Value& sep, std::int64_t maxsplit, bool from_right) {
  std::vector<std::pair<std::size_t, std::size_t>> parts;  // byte ranges, in order
  if (sep.is_none()) {                                     // runs of whitespace separate; none at either end
    std::vector<std::pair<std::size_t, std::size_t>> words;
    for (std::size_t i = 0; i < s.s.size();) {
      std::size_t at = i;
      if (py_isspace(utf8_next(s.s, i))) continue;
      std::size_t end = i;
      while (end < s.s.size()) {
        std::size_t next = end;
        if (py_isspace(utf8_next(s.s, next))) break;
        end = next;
      }
      words.emplace_back(at, end);
      i = end;
    }
    std::size_t n = words.size();
    if (maxsplit < 0 || std::size_t(maxsplit) + 1 >= n) {
      parts = words;
    } else if (!from_right) {  // the rest keeps its trailing whitespace, as Python's split does
      parts.assign(words.begin(), words.begin() + maxsplit);
      parts.emplace_back(words[maxsplit].first, s.s.size());
    } else {  // and rsplit's keeps its leading whitespace
      parts.emplace_back(0, words[n - maxsplit - 1].second);
      parts.insert(parts.end(), words.end() - maxsplit, words.end());
    }
  } else {
    const std::string& d = need_str(sep.defined(), "separator").s;
    if (d.empty()) fail("empty separator");
    std::vector<std::size_t> hits;
    for (std::size_t p = s.s.find(d); p != std::string::npos; p = s.s.find(d, p + d.size())) hits.push_back(p);
    if (maxsplit >= 0 && hits.size() > std::size_t(maxsplit)) {
      if (from_right) {
        // rsplit scans from the right, so its separators do not overlap from that side.
        hits.clear();
        std::size_t end = s.s.size();
        while (hits.size() < std::size_t(maxsplit) && end >= d.size()) {
          std::size_t p = s.s.rfind(d, end - d.size());
          if (p == std::string::npos) break;
          hits.insert(hits.begin(), p);
          end = p;
        }
      } else {
        hits.resize(maxsplit);
      }
    }
    std::size_t at = 0;
    for (std::size_t p : hits) {
      parts.emplace_back(at, p);
      at = p + d.size();
    }
    parts.emplace_back(at, s.s.size());
  }
  std::vector<Value> out;
  for (auto [b, e] : parts) out.push_back(substring(ev, s, b, e));
  return ev.list(std::move(out));
}

StrPtr replace(Evaluator& ev, const Str& s, const Str& old, const Str& repl, std::int64_t count) {
  StrBuilder out = ev.builder();
  std::int64_t done = 0;
  if (old.s.empty()) {  // "abc".replace("", "-") is "-a-b-c-"
    auto offsets = utf8_offsets(s.s);
    for (std::size_t k = 0; k < offsets.size(); ++k) {
      if (count < 0 || done < count) {
        out.add(repl);
        ++done;
      }
      if (k + 1 < offsets.size()) out.copy(s, offsets[k], offsets[k + 1]);
    }
    return out.done();
  }
  std::size_t at = 0;
  for (std::size_t p = s.s.find(old.s); p != std::string::npos && (count < 0 || done < count);
       p = s.s.find(old.s, at)) {
    out.copy(s, at, p);
    out.add(repl);
    at = p + old.s.size();
    ++done;
  }
  out.copy(s, at, s.s.size());
  return out.done();
}

std::string case_map(std::string_view s, char kind) {
  std::string out;
  bool prev_cased = false, first = true;
  for (std::size_t i = 0; i < s.size();) {
    char32_t c = utf8_next(s, i), r = c;
    if (kind == 'u') r = to_upper(c);
    if (kind == 'l') r = to_lower(c);
    if (kind == 't') {  // str.title(): a letter after a letter is lowered, any other letter raised
      r = prev_cased ? to_lower(c) : to_upper(c);
      prev_cased = is_cased(c);
    }
    if (kind == 'c') r = first ? to_upper(c) : to_lower(c);
    first = false;
    utf8_append(out, r);
  }
  return out;
}

std::vector<std::pair<std::size_t, std::size_t>> split_lines(std::string_view s) {
  std::vector<std::pair<std::size_t, std::size_t>> lines;
  std::size_t start = 0;
  for (std::size_t i = 0; i < s.size();) {
    std::size_t at = i;
    char32_t c = utf8_next(s, i);
    bool brk = c == '\n' || c == '\r' || c == 0x0b || c == 0x0c || (c >= 0x1c && c <= 0x1e) || c == 0x85 ||
               c == 0x2028 || c == 0x2029;
    if (!brk) continue;
    if (c == '\r' && i < s.size() && s[i] == '\n') ++i;
    lines.emplace_back(start, at);
    start = i;
  }
  if (start < s.size()) lines.emplace_back(start, s.size());
  return lines;
}

}  // namespace linearnexus::jinja
