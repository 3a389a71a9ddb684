// Depth-bounded JSON parsing (see json_limits.h).
#include "json_limits.h"

#include <stdexcept>
#include <string>

namespace linearnexus {

nlohmann::json parse_json_limited(std::string_view text, int max_depth) {
  // One pass over the bytes counting [ and { outside strings; escapes inside strings skipped.
  int depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\')
        ++i;
      else if (c == '"')
        in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > max_depth)
        throw std::runtime_error("JSON nested deeper than " + std::to_string(max_depth) + " levels");
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return nlohmann::json::parse(text.begin(), text.end());
}

std::string python_json_floats(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      out += c;
      if (c == '\\' && i + 1 < text.size())
        out += text[++i];
      else if (c == '"')
        in_string = false;
      continue;
    }
    if (c == '"') in_string = true;
    const std::string_view rest = text.substr(i);
    if (rest.substr(0, 8) == "Infinity") {
      out += "1e308";
      i += 7;
    } else if (rest.substr(0, 3) == "NaN") {
      out += "null";
      i += 2;
    } else {
      out += c;  // "-Infinity": the minus stays, Infinity follows
    }
  }
  return out;
}

}  // namespace linearnexus
