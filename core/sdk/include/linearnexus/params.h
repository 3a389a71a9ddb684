#pragma once
// Parameter schemas and validated parameter sets.
//
// Every plugin registration carries a Schema; the host validates the YAML section against it
// (types, unknown keys with a suggestion, defaults; host/params_yaml.h) and prints it as
// documentation. A plugin only ever sees the resulting Params, never YAML.
#include <cstdint>
#include <limits>
#include <map>
#include <string>
#include <vector>

namespace linearnexus {

enum class ParamType { Int, Float, Bool, String, IntList, FloatList, StringList };
const char* param_type_name(ParamType t);

struct ParamSpec {
  std::string key;
  ParamType type;
  std::string default_value;  // YAML text ("4", "0.1", "true", "[0.9, 0.95]", "auto"); "" = required
  std::string doc;            // one line
  std::vector<std::string> choices =
      {};  // allowed values of a String key, or of each element of a StringList (empty = any)
  // Allowed range of a numeric key (every element of a numeric list), inclusive. Floats must be
  // finite whatever the range.
  double min = -std::numeric_limits<double>::infinity();
  double max = std::numeric_limits<double>::infinity();
  // The range as text for docs and errors: "" (any), ">= 1", "<= 2", "in [0, 1]".
  std::string range_text() const;
};
using Schema = std::vector<ParamSpec>;
// a's entries, then b's (a block's own keys, then a shared group such as layers.h's mlp_schema()).
inline Schema join_schemas(Schema a, const Schema& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// A typed value. Ints convert to floats on read; lists are stored element-wise.
struct ParamValue {
  ParamType type = ParamType::String;
  int64_t i = 0;
  double f = 0;
  bool b = false;
  std::string s;
  std::vector<int64_t> ilist;
  std::vector<double> flist;
  std::vector<std::string> slist;
};

class Params {
 public:
  Params() = default;
  explicit Params(std::string section) : section_(std::move(section)) {}

  bool has(const std::string& key) const { return values_.count(key) != 0; }
  int64_t get_int(const std::string& key) const;
  double get_float(const std::string& key) const;
  bool get_bool(const std::string& key) const;
  const std::string& get_string(const std::string& key) const;
  const std::vector<int64_t>& get_int_list(const std::string& key) const;
  std::vector<double> get_float_list(const std::string& key) const;
  const std::vector<std::string>& get_string_list(const std::string& key) const;

  void set(const std::string& key, ParamValue v) { values_[key] = std::move(v); }
  const std::map<std::string, ParamValue>& values() const { return values_; }
  const std::string& section() const { return section_; }

 private:
  const ParamValue& at(const std::string& key, ParamType want) const;
  std::string section_;  // e.g. "model.blocks.attention", for error messages
  std::map<std::string, ParamValue> values_;
};

// Shortest decimal text that reads back as the same double (`plain`: whole numbers without ".0").
std::string number_text(double v, bool plain = false);
// Closest candidate by edit distance, or "" when nothing is close.
std::string nearest_key(const std::string& key, const std::vector<std::string>& candidates);

}  // namespace linearnexus
