// json.dumps for chat templates (jinja_json.h).
#include "jinja_json.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

namespace linearnexus::jinja {

JsonStyle default_json_style(int indent) {
  // json.dumps: (', ', ': ') without an indent, (',', ': ') with one.
  return JsonStyle{indent, indent < 0 ? ", " : ",", ": ", false};
}

// A JSON string: runs of characters that need no escape are copied with their spans.
static void json_string(StrBuilder& out, const Str& s) {
  out.lit("\"");
  std::size_t run = 0;
  for (std::size_t i = 0; i < s.s.size(); ++i) {
    auto c = static_cast<unsigned char>(s.s[i]);
    if (c >= 0x20 && c != '"' && c != '\\') continue;
    out.copy(s, run, i);
    char buf[8];
    switch (c) {
      case '"':
        out.lit("\\\"");
        break;
      case '\\':
        out.lit("\\\\");
        break;
      case '\n':
        out.lit("\\n");
        break;
      case '\r':
        out.lit("\\r");
        break;
      case '\t':
        out.lit("\\t");
        break;
      case '\b':
        out.lit("\\b");
        break;
      case '\f':
        out.lit("\\f");
        break;
      default:
        std::snprintf(buf, sizeof buf, "\\u%04x", unsigned(c));
        out.lit(buf);
    }
    run = i + 1;
  }
  out.copy(s, run, s.s.size());
  out.lit("\"");
}

static void json_newline(StrBuilder& out, const JsonStyle& style, int level) {
  out.lit("\n");
  out.lit(std::string(std::size_t(style.indent) * level, ' '));
}

void to_json(StrBuilder& out, const Value& v, const JsonStyle& style, int level) {
  if (level > 100) fail("a value nested too deeply to serialize as JSON");
  switch (v.type()) {
    case Type::None:
      out.lit("null");
      return;
    case Type::Bool:
      out.lit(std::get<bool>(v.v) ? "true" : "false");
      return;
    case Type::Int:
      out.lit(std::to_string(std::get<std::int64_t>(v.v)));
      return;
    case Type::Float: {
      double d = std::get<double>(v.v);
      out.lit(std::isnan(d) ? "NaN" : std::isinf(d) ? (d < 0 ? "-Infinity" : "Infinity") : py_float(d));
      return;
    }
    case Type::Str:
      json_string(out, v.str());
      return;
    case Type::List:
    case Type::Dict: {
      bool is_list = v.is(Type::List);
      if (is_list && v.list().kind == List::Iterator) break;
      std::size_t n = is_list ? v.list().items.size() : v.dict().items.size();
      out.lit(is_list ? "[" : "{");
      if (n == 0) {
        out.lit(is_list ? "]" : "}");
        return;
      }
      std::vector<std::size_t> order(n);
      for (std::size_t i = 0; i < n; ++i) order[i] = i;
      if (!is_list && style.sort_keys)
        std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
          return v.dict().items[a].first < v.dict().items[b].first;
        });
      for (std::size_t k = 0; k < n; ++k) {
        if (k) out.lit(style.item_sep);
        if (style.indent >= 0) json_newline(out, style, level + 1);
        if (is_list) {
          to_json(out, v.list().items[order[k]], style, level + 1);
        } else {
          const auto& [key, val] = v.dict().items[order[k]];
          Str key_str{key, {}};
          json_string(out, key_str);
          out.lit(style.key_sep);
          to_json(out, val, style, level + 1);
        }
      }
      if (style.indent >= 0) json_newline(out, style, level);
      out.lit(is_list ? "]" : "}");
      return;
    }
    default:
      break;
  }
  fail(std::string("Object of type ") + type_name(v) + " is not JSON serializable");
}

}  // namespace linearnexus::jinja
