// Jinja's filters for chat templates (jinja_filters.h).
#include "jinja_filters.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "jinja_globals.h"
#include "jinja_json.h"
#include "jinja_methods.h"
#include "jinja_ops.h"
#include "jinja_tests.h"

namespace linearnexus::jinja {
namespace {

const char* const kFilters[] = {"abs",    "attr",       "batch",       "capitalize", "center",   "count",
                                "d",      "default",    "dictsort",    "e",          "escape",   "filesizeformat",
                                "first",  "float",      "forceescape", "format",     "groupby",  "indent",
                                "int",    "items",      "join",        "last",       "length",   "list",
                                "lower",  "map",        "max",         "min",        "pprint",   "random",
                                "reject", "rejectattr", "replace",     "reverse",    "round",    "safe",
                                "select", "selectattr", "slice",       "sort",       "string",   "striptags",
                                "sum",    "title",      "tojson",      "trim",       "truncate", "unique",
                                "upper",  "urlencode",  "urlize",      "wordcount",  "wordwrap", "xmlattr"};

Value iterator(Evaluator& ev, std::vector<Value> items) { return ev.list(std::move(items), List::Iterator); }

std::size_t length(const Value& v) {
  switch (v.type()) {
    case Type::Undefined:
      return 0;
    case Type::Str:
      return utf8_length(v.str().s);
    case Type::List:
      if (v.list().kind == List::Iterator) fail("object of type 'generator' has no len()");
      return v.list().items.size();
    case Type::Dict:
      return v.dict().items.size();
    default:
      fail(std::string("object of type '") + type_name(v) + "' has no len()");
  }
}

// Jinja's make_attrgetter: "a.b.0" looks up a, then b, then item 0, each as obj[key].
Value attr_path(Evaluator& ev, const Value& obj, const Value& attribute, const Value* fallback = nullptr) {
  Value cur = obj;
  if (attribute.is_int()) return getitem(ev, cur, attribute);
  const std::string path = py_str(attribute, ev.budget)->s;
  std::size_t at = 0;
  for (;;) {
    std::size_t dot = path.find('.', at);
    std::string part = path.substr(at, dot == std::string::npos ? std::string::npos : dot - at);
    bool digits = !part.empty() && std::all_of(part.begin(), part.end(), [](char c) { return c >= '0' && c <= '9'; });
    cur = getitem(ev, cur, digits ? Value::integer(std::strtoll(part.c_str(), nullptr, 10)) : Value::text(part));
    if (cur.is_undefined() && fallback && !fallback->is_none()) cur = *fallback;  // Jinja: default=None is no default
    if (dot == std::string::npos) return cur;
    at = dot + 1;
  }
}

// The key sort / unique / min / max / dictsort compare by: lowercased strings unless case_sensitive.
Value sort_key(const Value& v, bool case_sensitive) {
  return !case_sensitive && v.is_str() ? Value::text(case_map(v.str().s, 'l')) : v;
}

CallArgs rest(const CallArgs& args, std::size_t from) {
  CallArgs out;
  for (std::size_t i = from; i < args.pos.size(); ++i) out.pos.push_back(args.pos[i]);
  out.kw = args.kw;
  return out;
}

// select / reject / selectattr / rejectattr: a generator of the items whose test (or truth) matches.
Value select(Evaluator& ev, const Value& seq, CallArgs& args, bool on_attr, bool keep) {
  std::size_t first = on_attr ? 1 : 0;
  std::vector<Value> out;
  if (!truthy(seq)) return iterator(ev, std::move(out));  // Jinja's `if value:`: None selects nothing
  if (on_attr && args.pos.empty()) fail("Missing parameter for attribute name");
  for (const Value& item : iterate(ev, seq)) {
    Value v = on_attr ? attr_path(ev, item, args.pos[0]) : item;
    bool ok;
    if (args.pos.size() > first) {
      const Value& test = args.pos[first].defined();
      if (!test.is_str()) fail("a test name must be a string");
      CallArgs targs = rest(args, first + 1);
      ok = apply_test(ev, test.str().s, v, targs);
    } else {
      ok = truthy(v);
    }
    if (ok == keep) out.push_back(item);
  }
  return iterator(ev, std::move(out));
}

Value map_filter(Evaluator& ev, const Value& seq, CallArgs& args) {
  std::vector<Value> out;
  if (!truthy(seq)) return iterator(ev, std::move(out));  // Jinja's `if value:`: None maps to nothing
  auto attr = std::find_if(args.kw.begin(), args.kw.end(), [](const auto& kv) { return kv.first == "attribute"; });
  if (attr != args.kw.end() || args.pos.empty()) {
    Args a("map", args, {"attribute", "default"});
    const Value* fallback = a.get(1);
    for (const Value& item : iterate(ev, seq)) out.push_back(attr_path(ev, item, a.get_or(0, Value::none()), fallback));
    return iterator(ev, std::move(out));
  }
  const Value& name = args.pos[0].defined();
  if (!name.is_str()) fail("map: the filter name must be a string");
  if (!is_jinja_filter(name.str().s)) fail("No filter named '" + name.str().s + "'");
  for (const Value& item : iterate(ev, seq)) {
    CallArgs fargs = rest(args, 1);
    out.push_back(apply_filter(ev, name.str().s, item, fargs));
  }
  return iterator(ev, std::move(out));
}

std::vector<Value> sorted(Evaluator& ev, std::vector<Value> items, bool reverse, bool case_sensitive,
                          const Value* attribute) {
  std::vector<std::pair<Value, Value>> keyed;  // (key, item)
  for (Value& item : items)
    keyed.emplace_back(sort_key(attribute ? attr_path(ev, item, *attribute) : item, case_sensitive), std::move(item));
  ev.budget.charge(keyed.size() * 8);
  std::stable_sort(keyed.begin(), keyed.end(), [&](const auto& a, const auto& b) {
    return reverse ? compare(b.first, a.first) < 0 : compare(a.first, b.first) < 0;
  });
  std::vector<Value> out;
  for (auto& k : keyed) out.push_back(std::move(k.second));
  return out;
}

std::string trimmed(const std::string& s) {
  std::size_t i = 0, e = s.size();
  while (i < e && py_isspace(static_cast<unsigned char>(s[i]))) ++i;
  while (e > i && py_isspace(static_cast<unsigned char>(s[e - 1]))) --e;
  return s.substr(i, e - i);
}

// Python's int(str, base): whitespace around, an optional sign, a 0x / 0o / 0b prefix matching the
// base (any of them for base 0), digits with single underscores.
bool parse_int(const std::string& s, int base, std::int64_t& out) {
  if (base != 0 && (base < 2 || base > 36)) fail("int() base must be >= 2 and <= 36, or 0");
  std::string t = trimmed(s), digits;
  std::size_t k = 0;
  if (k < t.size() && (t[k] == '+' || t[k] == '-')) digits += t[k++];
  if (k + 1 < t.size() && t[k] == '0') {
    char p = t[k + 1] | 0x20;
    int prefixed = p == 'x' ? 16 : p == 'o' ? 8 : p == 'b' ? 2 : 0;
    if (prefixed && (base == 0 || base == prefixed)) {
      base = prefixed;
      k += 2;
      if (k < t.size() && t[k] == '_') ++k;
    }
  }
  if (base == 0) {  // no prefix: decimal, where a leading zero allows only zeros
    base = 10;
    if (k < t.size() && t[k] == '0' && t.find_first_not_of("0_", k) != std::string::npos) return false;
  }
  bool prev_digit = false;
  for (; k < t.size(); ++k) {
    char c = t[k];
    int d = c >= '0' && c <= '9' ? c - '0' : (c | 0x20) >= 'a' && (c | 0x20) <= 'z' ? (c | 0x20) - 'a' + 10 : 99;
    if (c == '_' && prev_digit && k + 1 < t.size() && t[k + 1] != '_') {
      prev_digit = false;
      continue;
    }
    if (d >= base) return false;
    digits += c;
    prev_digit = true;
  }
  if (!prev_digit) return false;
  errno = 0;
  long long r = std::strtoll(digits.c_str(), nullptr, base);
  if (errno) return false;
  out = r;
  return true;
}

bool parse_float(const std::string& s, double& out) {
  std::string t;
  for (char c : trimmed(s))
    if (c != '_') t += c;
  if (t.empty() || t.find_first_of("xXpP") != std::string::npos) return false;  // strtod reads hex floats
  char* end = nullptr;
  out = std::strtod(t.c_str(), &end);
  return *end == '\0';
}

Value tojson(Evaluator& ev, const Value& v, CallArgs& args) {
  Args a("tojson", args, {"ensure_ascii", "indent", "separators", "sort_keys"});
  Value indent = a.get_or(1, Value::none());
  if (!indent.is_none() && !indent.defined().is_int()) fail("tojson: indent must be an integer");
  if (!indent.is_none() && indent.as_int() > 1024) fail("tojson: an indent above 1024 is not supported");
  JsonStyle style = default_json_style(indent.is_none() ? -1 : int(std::max<std::int64_t>(0, indent.as_int())));
  if (const Value* seps = a.get(2); seps && !seps->is_none()) {
    if (!seps->is(Type::List) || seps->list().items.size() != 2 || !seps->list().items[0].is_str() ||
        !seps->list().items[1].is_str())
      fail("tojson: separators must be a pair of strings");
    style.item_sep = seps->list().items[0].str().s;
    style.key_sep = seps->list().items[1].str().s;
  }
  style.sort_keys = truthy(a.get_or(3, Value::boolean(false)));
  StrBuilder out = ev.builder();
  to_json(out, v, style);
  StrPtr json = out.done();
  if (!truthy(a.get_or(0, Value::boolean(false)))) return Value::string(json);
  std::string ascii;  // ensure_ascii=True: \uXXXX (surrogate pairs above the BMP); no spans then
  for (std::size_t i = 0; i < json->s.size();) {
    char32_t c = utf8_next(json->s, i);
    char buf[16];
    if (c < 0x80) {
      ascii += static_cast<char>(c);
    } else if (c < 0x10000) {
      std::snprintf(buf, sizeof buf, "\\u%04x", unsigned(c));
      ascii += buf;
    } else {
      c -= 0x10000;
      std::snprintf(buf, sizeof buf, "\\u%04x\\u%04x", unsigned(0xd800 + (c >> 10)), unsigned(0xdc00 + (c & 0x3ff)));
      ascii += buf;
    }
  }
  return Value::text(ascii);
}

Value indent(Evaluator& ev, const Value& v, CallArgs& args) {
  Args a("indent", args, {"width", "first", "blank"});
  Value width = a.get_or(0, Value::integer(4));
  if (!width.is_str() && width.defined().as_int() > 1024) fail("indent: a width above 1024 is not supported");
  std::string pad =
      width.is_str() ? width.str().s : std::string(std::size_t(std::max<std::int64_t>(0, width.as_int())), ' ');
  bool first = truthy(a.get_or(1, Value::boolean(false))), blank = truthy(a.get_or(2, Value::boolean(false)));
  StrBuilder src = ev.builder();  // Jinja appends "\n" first, so a trailing line break keeps its line
  src.add(*py_str(v, ev.budget));
  src.lit("\n");
  StrPtr s = src.done();
  auto lines = split_lines(s->s);
  StrBuilder out = ev.builder();
  if (first) out.lit(pad);
  for (std::size_t i = 0; i < lines.size(); ++i) {
    if (i) {
      out.lit("\n");
      if (blank || lines[i].second > lines[i].first) out.lit(pad);
    }
    out.copy(*s, lines[i].first, lines[i].second);
  }
  return Value::string(out.done());
}

Value minmax(Evaluator& ev, const Value& v, CallArgs& args, bool want_max) {
  Args a(want_max ? "max" : "min", args, {"case_sensitive", "attribute"});
  bool cs = truthy(a.get_or(0, Value::boolean(false)));
  const Value* attribute = a.get(1);
  std::vector<Value> items = iterate(ev, v);
  if (items.empty()) return Value::undefined("No aggregated item, sequence was empty.");
  std::size_t best = 0;
  auto key = [&](std::size_t i) { return sort_key(attribute ? attr_path(ev, items[i], *attribute) : items[i], cs); };
  for (std::size_t i = 1; i < items.size(); ++i) {
    int c = compare(key(i), key(best));
    if (want_max ? c > 0 : c < 0) best = i;
  }
  return items[best];
}

}  // namespace

bool is_jinja_filter(const std::string& name) {
  return std::any_of(std::begin(kFilters), std::end(kFilters), [&](const char* f) { return name == f; });
}

Value apply_filter(Evaluator& ev, const std::string& f, const Value& v, CallArgs& args) {
  if (f == "default" || f == "d") {
    Args a(f, args, {"default_value", "boolean"});
    bool boolean = truthy(a.get_or(1, Value::boolean(false)));
    return v.is_undefined() || (boolean && !truthy(v)) ? a.get_or(0, Value::text("")) : v;
  }
  if (f == "tojson") return tojson(ev, v, args);
  if (f == "length" || f == "count") return Value::integer(std::int64_t(length(v)));
  if (f == "string" || f == "safe") return Value::string(py_str(v, ev.budget));
  if (f == "trim") {
    Args a(f, args, {"chars"});
    return Value::string(strip(ev, *py_str(v, ev.budget), a.get(0), true, true));
  }
  if (f == "upper" || f == "lower" || f == "title" || f == "capitalize") {
    Args a(f, args, {});
    return Value::text(case_map(py_str(v, ev.budget)->s, f == "upper"   ? 'u'
                                                         : f == "lower" ? 'l'
                                                         : f == "title" ? 't'
                                                                        : 'c'));
  }
  if (f == "replace") {
    Args a(f, args, {"old", "new", "count"});
    Value count = a.get_or(2, Value::none());
    return Value::string(replace(ev, *py_str(v, ev.budget), *py_str(a.required(0), ev.budget),
                                 *py_str(a.required(1), ev.budget), count.is_none() ? -1 : count.defined().as_int()));
  }
  if (f == "join") {
    Args a(f, args, {"d", "attribute"});
    Value sep = a.get_or(0, Value::text(""));
    StrBuilder out = ev.builder();
    std::size_t i = 0;
    for (const Value& item : iterate(ev, v)) {
      if (i++) out.add(*py_str(sep, ev.budget));
      out.add(*py_str(a.get(1) ? attr_path(ev, item, *a.get(1)) : item, ev.budget));
    }
    return Value::string(out.done());
  }
  if (f == "list") return ev.list(iterate(ev, v));
  if (f == "first") {
    Args a(f, args, {});
    auto items = iterate(ev, v);
    return items.empty() ? Value::undefined("No first item, sequence was empty.") : items.front();
  }
  if (f == "last") {
    Args a(f, args, {});
    if (v.is(Type::List) && v.list().kind == List::Iterator) fail("'generator' object is not reversible");
    auto items = iterate(ev, v);
    return items.empty() ? Value::undefined("No last item, sequence was empty.") : items.back();
  }
  if (f == "items") {
    if (v.is_undefined()) return iterator(ev, {});
    if (!v.is(Type::Dict)) fail("Can only get item pairs from a mapping.");
    std::vector<Value> out;
    for (const auto& [k, val] : v.dict().items) out.push_back(ev.list({Value::text(k), val}, List::Tuple));
    return iterator(ev, std::move(out));
  }
  if (f == "map") return map_filter(ev, v, args);
  if (f == "select" || f == "reject") return select(ev, v, args, false, f == "select");
  if (f == "selectattr" || f == "rejectattr") return select(ev, v, args, true, f == "selectattr");
  if (f == "sort") {
    Args a(f, args, {"reverse", "case_sensitive", "attribute"});
    return ev.list(sorted(ev, iterate(ev, v), truthy(a.get_or(0, Value::boolean(false))),
                          truthy(a.get_or(1, Value::boolean(false))), a.get(2)));
  }
  if (f == "dictsort") {
    Args a(f, args, {"case_sensitive", "by", "reverse"});
    if (!v.is(Type::Dict)) fail("dictsort: the value must be a dict");
    Value by = a.get_or(1, Value::text("key"));
    Value index = Value::integer(by.is_str() && by.str().s == "value" ? 1 : 0);
    if (!by.is_str() || (by.str().s != "key" && by.str().s != "value"))
      fail("You can only sort by either \"key\" or \"value\"");
    std::vector<Value> pairs;
    for (const auto& [k, val] : v.dict().items) pairs.push_back(ev.list({Value::text(k), val}, List::Tuple));
    return ev.list(sorted(ev, std::move(pairs), truthy(a.get_or(2, Value::boolean(false))),
                          truthy(a.get_or(0, Value::boolean(false))), &index));
  }
  if (f == "unique") {
    Args a(f, args, {"case_sensitive", "attribute"});
    bool cs = truthy(a.get_or(0, Value::boolean(false)));
    std::vector<Value> out, seen;
    for (const Value& item : iterate(ev, v)) {
      Value key = sort_key(a.get(1) ? attr_path(ev, item, *a.get(1)) : item, cs);
      ev.budget.charge(seen.size());
      if (std::none_of(seen.begin(), seen.end(), [&](const Value& s) { return equals(s, key); })) {
        seen.push_back(key);
        out.push_back(item);
      }
    }
    return iterator(ev, std::move(out));
  }
  if (f == "reverse") {
    if (v.is_str()) return slice(ev, v, Value::none(), Value::none(), Value::integer(-1));
    std::vector<Value> items = iterate(ev, v);
    std::reverse(items.begin(), items.end());
    return iterator(ev, std::move(items));
  }
  if (f == "min" || f == "max") return minmax(ev, v, args, f == "max");
  if (f == "sum") {
    Args a(f, args, {"attribute", "start"});
    Value total = a.get_or(1, Value::integer(0));
    for (const Value& item : iterate(ev, v))
      total = binary_op(ev, "+", total, a.get(0) ? attr_path(ev, item, *a.get(0)) : item);
    return total;
  }
  if (f == "abs") {
    if (v.is_int()) return v.as_int() < 0 ? negate(v, true) : Value::integer(v.as_int());
    if (v.is(Type::Float)) return Value::number(std::fabs(v.as_double()));
    fail(std::string("bad operand type for abs(): '") + type_name(v) + "'");
  }
  if (f == "round") {
    Args a(f, args, {"precision", "method"});
    std::int64_t precision = a.get_or(0, Value::integer(0)).defined().as_int();
    std::string method = py_str(a.get_or(1, Value::text("common")), ev.budget)->s;
    if (!v.defined().is_number()) fail("round: the value must be a number");
    double x = v.as_double(), scale = std::pow(10.0, double(precision));
    if (method == "common") {
      char buf[512];  // correctly rounded, ties to even as Python's round() on the exact binary value
      std::snprintf(buf, sizeof buf, "%.*f", int(std::clamp<std::int64_t>(precision, 0, 300)), x);
      return Value::number(precision >= 0 ? std::strtod(buf, nullptr) : std::nearbyint(x * scale) / scale);
    }
    if (method == "ceil") return Value::number(std::ceil(x * scale) / scale);
    if (method == "floor") return Value::number(std::floor(x * scale) / scale);
    fail("method must be common, ceil or floor");
  }
  if (f == "int") {
    Args a(f, args, {"default", "base"});
    Value fallback = a.get_or(0, Value::integer(0));
    if (v.is_int()) return Value::integer(v.as_int());
    if (v.is(Type::Float)) {
      double d = v.as_double();
      return std::isfinite(d) && std::fabs(d) < 9.2e18 ? Value::integer(std::int64_t(d)) : fallback;
    }
    if (v.is_str()) {
      std::int64_t i = 0;
      double d = 0;
      if (parse_int(v.str().s, int(a.get_or(1, Value::integer(10)).defined().as_int()), i)) return Value::integer(i);
      if (parse_float(v.str().s, d) && std::isfinite(d) && std::fabs(d) < 9.2e18)
        return Value::integer(std::int64_t(d));
      return fallback;
    }
    v.defined();
    return fallback;
  }
  if (f == "float") {
    Args a(f, args, {"default"});
    double d = 0;
    if (v.is_number()) return Value::number(v.as_double());
    if (v.is_str() && parse_float(v.str().s, d)) return Value::number(d);
    v.defined();
    return a.get_or(0, Value::number(0.0));
  }
  if (f == "indent") return indent(ev, v, args);
  if (f == "center") {
    Args a(f, args, {"width"});
    StrPtr s = py_str(v, ev.budget);
    std::int64_t width = a.get_or(0, Value::integer(80)).defined().as_int(), n = std::int64_t(utf8_length(s->s));
    if (width > 1 << 20) fail("center: width too large");
    std::int64_t marg = std::max<std::int64_t>(0, width - n), left = marg / 2 + (marg & width & 1);
    StrBuilder out = ev.builder();
    out.lit(std::string(std::size_t(left), ' '));
    out.add(*s);
    out.lit(std::string(std::size_t(marg - left), ' '));
    return Value::string(out.done());
  }
  if (f == "format") {
    if (!args.kw.empty() && !args.pos.empty()) fail("can't handle positional and keyword arguments at the same time");
    if (!args.kw.empty()) fail("format with keyword arguments is not supported");
    return Value::string(percent_format(ev, *py_str(v, ev.budget), ev.list(args.pos, List::Tuple)));
  }
  if (f == "escape" || f == "e" || f == "forceescape") {
    std::string out;
    StrPtr text = py_str(v, ev.budget);
    for (char c : text->s) {
      switch (c) {
        case '&':
          out += "&amp;";
          break;
        case '<':
          out += "&lt;";
          break;
        case '>':
          out += "&gt;";
          break;
        case '"':
          out += "&#34;";
          break;
        case '\'':
          out += "&#39;";
          break;
        default:
          out += c;
      }
    }
    return Value::text(out);
  }
  if (f == "attr") {  // an attribute only (a method, a namespace's), never a dict's item
    Args a(f, args, {"name"});
    std::string name = py_str(a.required(0), ev.budget)->s;
    if (v.is(Type::Dict)) return bound_method(ev, v, name);
    return getattr(ev, v, name);
  }
  if (f == "wordcount") {
    std::int64_t words = 0;
    bool in_word = false;
    const std::string s = py_str(v, ev.budget)->s;
    for (std::size_t i = 0; i < s.size();) {
      char32_t c = utf8_next(s, i);
      bool w = c == '_' || (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
               (c >= 0xc0 && !py_isspace(c) && c != 0xd7 && c != 0xf7 && !(c >= 0x2000 && c <= 0x206f) &&
                !(c >= 0x3000 && c <= 0x303f));
      words += w && !in_word;
      in_word = w;
    }
    return Value::integer(words);
  }
  if (f == "truncate") {
    Args a(f, args, {"length", "killwords", "end", "leeway"});
    StrPtr s = py_str(v, ev.budget);
    std::int64_t len = a.get_or(0, Value::integer(255)).defined().as_int(),
                 leeway = a.get_or(3, Value::integer(5)).defined().as_int();
    StrPtr end = py_str(a.get_or(2, Value::text("...")), ev.budget);
    std::int64_t end_len = std::int64_t(utf8_length(end->s));
    if (len < end_len) fail("expected length >= " + std::to_string(end_len) + ", got " + std::to_string(len));
    auto offsets = utf8_offsets(s->s);
    if (std::int64_t(offsets.size()) - 1 <= len + leeway) return Value::string(s);
    std::size_t cut = offsets[std::size_t(len - end_len)];
    if (!truthy(a.get_or(1, Value::boolean(false)))) {
      std::size_t space = s->s.rfind(' ', cut == 0 ? 0 : cut - 1);
      if (space != std::string::npos && space < cut) cut = space;
    }
    StrBuilder out = ev.builder();
    out.copy(*s, 0, cut);
    out.add(*end);
    return Value::string(out.done());
  }
  if (f == "batch") {
    Args a(f, args, {"linecount", "fill_with"});
    std::int64_t n = a.required(0).as_int();
    if (n <= 0) fail("batch: linecount must be positive");
    std::vector<Value> out, cur;
    for (const Value& item : iterate(ev, v)) {
      cur.push_back(item);
      if (std::int64_t(cur.size()) == n) out.push_back(ev.list(std::move(cur))), cur.clear();
    }
    if (!cur.empty()) {
      if (const Value* fill = a.get(1); fill && !fill->is_none())
        while (std::int64_t(cur.size()) < n) cur.push_back(*fill);
      out.push_back(ev.list(std::move(cur)));
    }
    return iterator(ev, std::move(out));
  }
  fail("the filter '" + f + "' is not supported in chat templates");
}

}  // namespace linearnexus::jinja
