// Parameter values and schemas (see params.h): typed reads, range texts and the nearest-key suggestion.
#include "linearnexus/params.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <sstream>

#include "linearnexus/error.h"

namespace linearnexus {

const char* param_type_name(ParamType t) {
  switch (t) {
    case ParamType::Int:
      return "int";
    case ParamType::Float:
      return "float";
    case ParamType::Bool:
      return "bool";
    case ParamType::String:
      return "string";
    case ParamType::IntList:
      return "list[int]";
    case ParamType::FloatList:
      return "list[float]";
    case ParamType::StringList:
      return "list[string]";
  }
  return "?";
}

std::string number_text(double v, bool plain) {
  if (plain && v == static_cast<double>(static_cast<int64_t>(v))) return std::to_string(static_cast<int64_t>(v));
  char buf[64];
  for (int prec = 6; prec <= 17; ++prec) {
    std::snprintf(buf, sizeof buf, "%.*g", prec, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  std::string s = buf;
  if (s.find_first_of(".eEn") == std::string::npos) s += ".0";  // keep it a float in YAML
  return s;
}

std::string ParamSpec::range_text() const {
  const bool lo = min > -std::numeric_limits<double>::infinity(), hi = max < std::numeric_limits<double>::infinity();
  if (lo && hi) return "in [" + number_text(min, true) + ", " + number_text(max, true) + "]";
  if (lo) return ">= " + number_text(min, true);
  if (hi) return "<= " + number_text(max, true);
  return "";
}

const ParamValue& Params::at(const std::string& key, ParamType want) const {
  auto it = values_.find(key);
  if (it == values_.end()) throw Error("internal: parameter '" + section_ + "." + key + "' is not in the schema");
  bool ok = it->second.type == want || (want == ParamType::Float && it->second.type == ParamType::Int) ||
            (want == ParamType::FloatList && it->second.type == ParamType::IntList);
  if (!ok)
    throw Error("internal: parameter '" + section_ + "." + key + "' is a " + param_type_name(it->second.type) +
                ", read as " + param_type_name(want));
  return it->second;
}
int64_t Params::get_int(const std::string& key) const { return at(key, ParamType::Int).i; }
double Params::get_float(const std::string& key) const {
  const auto& v = at(key, ParamType::Float);
  return v.type == ParamType::Int ? static_cast<double>(v.i) : v.f;
}
bool Params::get_bool(const std::string& key) const { return at(key, ParamType::Bool).b; }
const std::string& Params::get_string(const std::string& key) const { return at(key, ParamType::String).s; }
const std::vector<int64_t>& Params::get_int_list(const std::string& key) const {
  return at(key, ParamType::IntList).ilist;
}
std::vector<double> Params::get_float_list(const std::string& key) const {
  const auto& v = at(key, ParamType::FloatList);
  if (v.type == ParamType::IntList) return std::vector<double>(v.ilist.begin(), v.ilist.end());
  return v.flist;
}
const std::vector<std::string>& Params::get_string_list(const std::string& key) const {
  return at(key, ParamType::StringList).slist;
}

std::string nearest_key(const std::string& key, const std::vector<std::string>& candidates) {
  auto dist = [](const std::string& a, const std::string& b) {
    std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
    for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
    for (size_t i = 1; i <= a.size(); ++i) {
      cur[0] = i;
      for (size_t j = 1; j <= b.size(); ++j)
        cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1])});
      std::swap(prev, cur);
    }
    return prev[b.size()];
  };
  std::string best;
  size_t best_d = std::max<size_t>(2, key.size() / 3) + 1;
  for (const auto& c : candidates) {
    size_t d = dist(key, c);
    if (d < best_d) best_d = d, best = c;
  }
  return best;
}

}  // namespace linearnexus
