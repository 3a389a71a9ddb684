// JSON value texts for Hugging Face adapters (hf_adapter.h).
#include "linearnexus/hf_adapter.h"

#include <cstdio>

namespace linearnexus {

std::string hf_json(const std::string& text) {
  std::string out = "\"";
  for (unsigned char c : text) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  return out + "\"";
}
std::string hf_json(const char* text) { return hf_json(std::string(text)); }
std::string hf_json(int64_t value) { return std::to_string(value); }
std::string hf_json(double value) {
  // JSON has no NaN or infinity, and a whole number stays a float ("1e-05", "0.0").
  return number_text(value);
}
std::string hf_json(bool value) { return value ? "true" : "false"; }
std::string hf_json_list(const std::vector<std::string>& items) {
  std::string out = "[";
  for (size_t i = 0; i < items.size(); ++i) out += (i ? ", " : "") + items[i];
  return out + "]";
}

}  // namespace linearnexus
