// Reading a Hugging Face tokenizer.json (byte-level BPE) and tokenizer_config.json: hf_tokenizer.h.
//
// What `tokenizers` does with such a file, and how it maps onto BPEVocab:
//   * added_tokens are cut out of the text first (leftmost, then longest) -> BPEVocab::added;
//   * the normalizer runs on the text between them (Qwen2: NFC) -> nfc;
//   * the pre-tokenizer splits that text: Split(regex, Isolated) and Digits keep the matches and
//     the gaps as pieces, ByteLevel(use_regex) splits with GPT-2's regex and maps bytes to its
//     printable alphabet -> split_patterns (the alphabet mapping is the byte-level vocabulary);
//   * BPE merges each piece, or takes a piece that is a token as is (ignore_merges) -> merges,
//     piece_lookup;
//   * the ByteLevel decoder maps the alphabet back to bytes -> tokens hold raw bytes already.
#include "hf_tokenizer.h"

#include <filesystem>
#include <nlohmann/json.hpp>
#include <unordered_map>

#include "bpe_files.h"
#include "json_limits.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace linearnexus {

namespace {

// One message shape for every problem: the file, the key, what is wrong, what to do.
[[noreturn]] void bad(const std::string& path, const std::string& key, const std::string& what) {
  throw Error("tokenizer: '" + path + "': " + key + " " + what);
}

const json& field(const json& j, const char* key) {
  static const json null;
  if (!j.is_object()) return null;
  const auto it = j.find(key);
  return it == j.end() ? null : *it;
}

std::string type_of(const json& j) {
  const json& t = field(j, "type");
  return t.is_string() ? t.get<std::string>() : t.dump();
}

json parse_file(const std::string& path, const char* what, int max_depth) {
  try {
    return parse_json_limited(read_tokenizer_file(path, what), max_depth);
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    throw Error("tokenizer: '" + path + "' is not valid JSON (" + e.what() + "); download the file again");
  }
}

// A literal for PCRE2: every ASCII character that is not a letter or digit escaped.
std::string regex_quote(const std::string& s) {
  std::string out;
  for (char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x80 && !std::isalnum(u)) out.push_back('\\');
    out.push_back(c);
  }
  return out;
}

constexpr char kSupported[] =
    "; LinearNexus reads byte-level BPE tokenizer.json files (GPT-2, Llama-3, Qwen2, SmolLM styles) and "
    "SentencePiece tokenizer.model files";

// One pre-tokenizer (a Sequence recursively) -> split patterns. `byte_level` is set by ByteLevel,
// which must come last: a Split after it would see GPT-2's byte alphabet, not the text.
void read_pre_tokenizer(const json& pt, const std::string& key, const std::string& path, BPEVocab& v,
                        bool& byte_level) {
  const std::string type = type_of(pt);
  if (byte_level)
    bad(path, key,
        "follows the ByteLevel pre-tokenizer; only pre-tokenizers before it are read" + std::string(kSupported));
  if (type == "Sequence") {
    const json& list = field(pt, "pretokenizers");
    if (!list.is_array()) bad(path, key + ".pretokenizers", "must be a list");
    for (size_t i = 0; i < list.size(); ++i)
      read_pre_tokenizer(list[i], key + ".pretokenizers[" + std::to_string(i) + "]", path, v, byte_level);
  } else if (type == "ByteLevel") {
    if (field(pt, "add_prefix_space") == true)
      bad(path, key + ".add_prefix_space", "is true, which is not supported (GPT-2, Llama-3 and Qwen2 leave it false)");
    if (field(pt, "use_regex") != false) v.split_patterns.push_back(kGpt2SplitPattern);
    byte_level = true;
  } else if (type == "Split") {
    const json& pattern = field(pt, "pattern");
    if (field(pattern, "Regex").is_string())
      v.split_patterns.push_back(field(pattern, "Regex").get<std::string>());
    else if (field(pattern, "String").is_string())
      v.split_patterns.push_back(regex_quote(field(pattern, "String").get<std::string>()));
    else
      bad(path, key + ".pattern", "must be {\"Regex\": ...} or {\"String\": ...}");
    if (field(pt, "behavior") != "Isolated")
      bad(path, key + ".behavior",
          "is " + field(pt, "behavior").dump() + "; only \"Isolated\" is supported" + kSupported);
    if (field(pt, "invert") == true) bad(path, key + ".invert", "is true, which is not supported");
  } else if (type == "Digits") {
    v.split_patterns.push_back(field(pt, "individual_digits") == true ? R"(\p{N})" : R"(\p{N}+)");
  } else {
    bad(path, key + ".type", "is '" + type + "', which is not read" + kSupported);
  }
}

void read_normalizer(const json& n, const std::string& key, const std::string& path, BPEVocab& v) {
  if (n.is_null()) return;
  const std::string type = type_of(n);
  if (type == "NFC") {
    v.nfc = true;
  } else if (type == "Sequence" && field(n, "normalizers").is_array()) {
    for (size_t i = 0; i < field(n, "normalizers").size(); ++i)
      read_normalizer(field(n, "normalizers")[i], key + ".normalizers[" + std::to_string(i) + "]", path, v);
  } else {
    bad(path, key + ".type", "is '" + type + "'; only NFC (or none) is supported" + kSupported);
  }
}

void check_decoder(const json& d, const std::string& key, const std::string& path) {
  const std::string type = type_of(d);
  if (type == "ByteLevel") return;
  if (type == "Sequence" && field(d, "decoders").is_array() && field(d, "decoders").size() == 1)
    return check_decoder(field(d, "decoders")[0], key + ".decoders[0]", path);
  bad(path, key + ".type", "is '" + type + "'; a byte-level BPE decodes with ByteLevel" + kSupported);
}

std::string token_text(const json& j) {  // "text" or {"content": "text", ...} (an AddedToken)
  if (j.is_string()) return j.get<std::string>();
  return field(j, "content").is_string() ? field(j, "content").get<std::string>() : "";
}

}  // namespace

HFTokenizerConfig read_hf_tokenizer_config(const std::string& folder) {
  HFTokenizerConfig out;
  std::error_code ec;
  const std::string config_path = (fs::path(folder) / "tokenizer_config.json").string();
  if (fs::is_regular_file(config_path, ec)) {
    const json config = parse_file(config_path, "tokenizer_config.json", 16);
    if (!config.is_object()) bad(config_path, "(top level)", "must be a JSON object");
    const json& tmpl = field(config, "chat_template");
    if (tmpl.is_string()) {
      out.chat_template = tmpl.get<std::string>();
    } else if (tmpl.is_array()) {  // named templates: [{name, template}], "default" first
      for (const auto& t : tmpl)
        if (field(t, "template").is_string() && (out.chat_template.empty() || field(t, "name") == "default"))
          out.chat_template = field(t, "template").get<std::string>();
    } else if (!tmpl.is_null()) {
      bad(config_path, "chat_template", "must be a string or a list of {name, template}");
    }
    out.eos_token = token_text(field(config, "eos_token"));
    out.bos_token = token_text(field(config, "bos_token"));
  }
  // transformers >= 4.43 saves the template beside the config instead.
  const std::string jinja = (fs::path(folder) / "chat_template.jinja").string();
  if (out.chat_template.empty() && fs::is_regular_file(jinja, ec))
    out.chat_template = read_tokenizer_file(jinja, "chat template");
  return out;
}

BPEVocab read_hf_tokenizer_json(const std::string& path, const std::string& eos_token) {
  const json j = parse_file(path, "tokenizer.json", 8);
  if (!j.is_object() || !j.contains("model"))
    bad(path, "model", "is missing: this is not a Hugging Face tokenizer.json");
  BPEVocab v;
  v.source = path;
  const json& model = j["model"];
  if (type_of(model) != "BPE")
    bad(path, "model.type",
        "is '" + type_of(model) + "', which is not read" + kSupported +
            " (a Unigram tokenizer.json usually comes with a tokenizer.model: give that)");
  if (field(model, "byte_fallback") == true)
    bad(path, "model.byte_fallback",
        "is true: this is a SentencePiece-style BPE, not byte-level; give its tokenizer.model");
  if (!field(model, "dropout").is_null()) bad(path, "model.dropout", "is set; BPE dropout is not supported");
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"})
    if (!field(model, key).is_null() && field(model, key) != "")
      bad(path, std::string("model.") + key, "is set, which is not supported" + std::string(kSupported));
  v.piece_lookup = field(model, "ignore_merges") == true;
  read_normalizer(field(j, "normalizer"), "normalizer", path, v);
  bool byte_level = false;
  read_pre_tokenizer(field(j, "pre_tokenizer"), "pre_tokenizer", path, v, byte_level);
  if (!byte_level)
    bad(path, "pre_tokenizer", "has no ByteLevel step: this is not a byte-level BPE" + std::string(kSupported));
  check_decoder(field(j, "decoder"), "decoder", path);

  // model.vocab: token (byte alphabet) -> id; added_tokens may add ids after it, or repeat one of its
  // tokens under the same id (GPT-2's <|endoftext|>). Ids must run 0..n-1, so none can be n or more
  // (n = the entries the file defines): checked before anything is sized by an id, so an id of 10^8
  // costs an error, not gigabytes.
  const json& vocab = field(model, "vocab");
  if (!vocab.is_object() || vocab.empty()) bad(path, "model.vocab", "must be a non-empty object of token -> id");
  const json& added = field(j, "added_tokens");
  if (!added.is_null() && !added.is_array()) bad(path, "added_tokens", "must be a list");
  const int64_t bound = static_cast<int64_t>(vocab.size() + (added.is_array() ? added.size() : 0));
  std::unordered_map<std::string, int32_t> ids;    // by the token's text in the byte alphabet
  std::unordered_map<int64_t, std::string> by_id;  // model.vocab's id -> its token's bytes
  std::unordered_map<std::string, int64_t> id_of_bytes;
  std::vector<std::pair<int64_t, std::string>> entries;
  std::string bytes;
  for (const auto& [text, id] : vocab.items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0)
      bad(path, "model.vocab[\"" + text + "\"]", "is " + id.dump() + ", not a token id");
    if (id.get<int64_t>() >= bound)
      bad(path, "model.vocab[\"" + text + "\"]",
          "is " + id.dump() + ", but the file defines " + std::to_string(bound) + " tokens, whose ids must run 0.." +
              std::to_string(bound - 1));
    if (!byte_level_to_bytes(text, bytes))
      bad(path, "model.vocab[\"" + text + "\"]",
          "is not in the byte-level alphabet: this is not a byte-level BPE" + std::string(kSupported));
    const int64_t n = id.get<int64_t>();
    if (by_id.count(n))
      bad(path, "model.vocab[\"" + text + "\"]",
          "has id " + std::to_string(n) + ", which another token of model.vocab has too");
    by_id.emplace(n, bytes);
    id_of_bytes.emplace(bytes, n);
    ids.emplace(text, static_cast<int32_t>(n));
    entries.emplace_back(n, bytes);
  }
  std::unordered_map<int64_t, size_t> added_ids;
  for (size_t i = 0; i < added.size(); ++i) {
    const json& a = added[i];
    const std::string key = "added_tokens[" + std::to_string(i) + "]";
    if (!field(a, "id").is_number_integer() || field(a, "id").get<int64_t>() < 0 ||
        field(a, "id").get<int64_t>() >= (int64_t{1} << 31) || !field(a, "content").is_string() ||
        field(a, "content").get<std::string>().empty())
      bad(path, key, "must have an integer id and a non-empty content string");
    if (field(a, "id").get<int64_t>() >= bound)
      bad(path, key,
          "has id " + field(a, "id").dump() + ", but the file defines " + std::to_string(bound) +
              " tokens, whose ids must run 0.." + std::to_string(bound - 1));
    for (const char* flag : {"single_word", "lstrip", "rstrip"})
      if (field(a, flag) == true) bad(path, key + "." + flag, "is true, which is not supported");
    const int64_t id = field(a, "id").get<int64_t>();
    const std::string content = field(a, "content").get<std::string>();
    // An added token names one token: a vocabulary entry with the same id must be that token, and its
    // text must not be another id's token (the two would decode and encode differently).
    if (auto it = by_id.find(id); it != by_id.end() && it->second != content)
      bad(path, key,
          "(id " + std::to_string(id) + ", '" + content + "') collides with model.vocab's token of that id; " +
              "an added token must be new or repeat its vocabulary entry exactly");
    if (auto it = id_of_bytes.find(content); it != id_of_bytes.end() && it->second != id)
      bad(path, key,
          "('" + content + "', id " + std::to_string(id) + ") is model.vocab's token with id " +
              std::to_string(it->second) + " already");
    if (!added_ids.emplace(id, i).second)
      bad(path, key,
          "has id " + std::to_string(id) + ", as added_tokens[" + std::to_string(added_ids.at(id)) + "] does");
    v.added.push_back(static_cast<int32_t>(id));
    entries.emplace_back(id, content);
  }
  int64_t n = 0;
  for (const auto& e : entries) n = std::max(n, e.first + 1);
  v.tokens.assign(static_cast<size_t>(n), {});
  std::vector<bool> seen(static_cast<size_t>(n), false);
  for (auto& [id, text] : entries) {  // an added token repeats its vocabulary entry (checked above)
    v.tokens[id] = std::move(text);
    seen[id] = true;
  }
  for (int64_t id = 0; id < n; ++id)
    if (!seen[id])
      bad(path, "model.vocab",
          "has no token with id " + std::to_string(id) + " (nor has added_tokens); ids must run 0.." +
              std::to_string(n - 1));

  const json& merges = field(model, "merges");
  if (!merges.is_array()) bad(path, "model.merges", "must be a list");
  v.merges.reserve(merges.size());
  for (size_t i = 0; i < merges.size(); ++i) {
    const json& m = merges[i];
    const std::string key = "model.merges[" + std::to_string(i) + "]";
    std::string left, right;
    if (m.is_string() && m.get<std::string>().find(' ') != std::string::npos) {  // "a b"
      const std::string s = m.get<std::string>();
      left = s.substr(0, s.find(' '));
      right = s.substr(s.find(' ') + 1);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {  // ["a", "b"]
      left = m[0].get<std::string>();
      right = m[1].get<std::string>();
    } else {
      bad(path, key, "is " + m.dump() + "; a merge is \"left right\" or [\"left\", \"right\"]");
    }
    const auto a = ids.find(left), b = ids.find(right), ab = ids.find(left + right);
    for (const auto& [it, name] : {std::pair{a, left}, std::pair{b, right}, std::pair{ab, left + right}})
      if (it == ids.end())
        bad(path, key, "(" + m.dump() + ") names the token '" + name + "', which is not in model.vocab");
    v.merges.push_back({a->second, b->second, ab->second});
  }

  // The end-of-text token: the config's eos_token, else "<|endoftext|>" when there is one.
  const std::string eos = eos_token.empty() ? "<|endoftext|>" : eos_token;
  for (int32_t id = 0; id < static_cast<int32_t>(v.tokens.size()) && v.eot < 0; ++id)
    if (v.tokens[id] == eos) v.eot = id;
  if (v.eot < 0 && !eos_token.empty())
    bad((fs::path(path).parent_path() / "tokenizer_config.json").string(), "eos_token",
        "is '" + eos_token + "', which is not a token of '" + path + "'");
  return v;
}

}  // namespace linearnexus
