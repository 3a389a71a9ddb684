// Reading meta.json (see prepared_meta.h).
#include "prepared_meta.h"

#include "json_limits.h"
#include "linearnexus/error.h"

using nlohmann::json;

namespace linearnexus {

namespace {

[[noreturn]] void bad(const std::string& meta_path, const std::string& what) {
  throw Error("prepared data: " + meta_path + ": " + what +
              "; the folder is corrupt or edited: run `linearnexus data prepare` again");
}

PreparedSplit read_split(const json& meta, const char* name, const std::string& path) {
  auto s = meta.find(name);
  if (s == meta.end() || !s->is_object()) bad(path, std::string("'") + name + "' is missing");
  PreparedSplit out;
  auto list = [&](const char* key) -> const json& {
    auto it = s->find(key);
    if (it == s->end() || !it->is_array() || it->empty())
      bad(path, std::string("'") + name + "." + key + "' is not a non-empty list");
    return *it;
  };
  for (const auto& f : list("files")) {
    const std::string file = f.is_string() ? f.get<std::string>() : "";
    if (file.empty() || file == "." || file == ".." || file.find('/') != std::string::npos)
      bad(path, std::string("'") + name + ".files' holds " + f.dump() + ", not a file name in the folder");
    out.files.push_back(file);
  }
  for (const auto& t : list("tokens")) {
    if (!t.is_number_integer() || t.get<int64_t>() < 0)
      bad(path, std::string("'") + name + ".tokens' holds " + t.dump() + ", not a token count");
    out.tokens.push_back(t.get<int64_t>());
  }
  for (const auto& h : list("sha256")) {
    const std::string hex = h.is_string() ? h.get<std::string>() : "";
    if (hex.size() != 64 || hex.find_first_not_of("0123456789abcdef") != std::string::npos)
      bad(path, std::string("'") + name + ".sha256' holds " + h.dump() + ", not a SHA-256");
    out.sha256.push_back(hex);
  }
  if (out.tokens.size() != out.files.size() || out.sha256.size() != out.files.size())
    bad(path, std::string("'") + name + "' must list one token count and one SHA-256 per file");
  return out;
}

}  // namespace

PreparedMeta parse_prepared_meta(const std::string& text, const std::string& path) {
  json meta;
  try {
    meta = parse_json_limited(text, 8);
  } catch (const std::exception& e) {
    bad(path, std::string("not valid JSON (") + e.what() + ")");
  }
  if (!meta.is_object()) bad(path, "not a JSON object");
  auto text_of = [&](const char* key) {
    auto it = meta.find(key);
    return it != meta.end() && it->is_string() ? it->get<std::string>() : std::string();
  };
  if (text_of("format") != kPreparedFormat)
    bad(path, "format is '" + text_of("format") + "', not '" + kPreparedFormat + "' (not a LinearNexus token folder)");
  PreparedMeta out;
  const std::string dtype = text_of("dtype");
  if (dtype != "uint16" && dtype != "uint32") bad(path, "dtype is '" + dtype + "', not uint16 or uint32");
  out.width = dtype == "uint16" ? 2 : 4;
  auto vocab = meta.find("vocab_size");
  if (vocab == meta.end() || !vocab->is_number_integer() || vocab->get<int64_t>() <= 0 ||
      vocab->get<int64_t>() > (out.width == 2 ? int64_t{1} << 16 : int64_t{1} << 32))
    bad(path, "vocab_size is missing or does not fit its dtype " + dtype);
  out.vocab_size = vocab->get<int64_t>();
  auto tok = meta.find("tokenizer");
  if (tok == meta.end() || !tok->is_object()) bad(path, "'tokenizer' is missing");
  out.tokenizer_json = tok->dump();
  out.train = read_split(meta, "train", path);
  out.val = read_split(meta, "val", path);
  return out;
}

}  // namespace linearnexus
