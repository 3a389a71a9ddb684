// Tokenizers: the character vocabulary, the GPT-2 BPE adapter, and reading a saved one back.
#include "linearnexus/tokenizer.h"

#include <nlohmann/json.hpp>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include "linearnexus/bpe_tokenizer.h"
#include "linearnexus/error.h"
#include "json_limits.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace linearnexus {

namespace {

class CharTokenizer : public Tokenizer {
 public:
  explicit CharTokenizer(std::vector<unsigned char> chars) : chars_(std::move(chars)) {
    ids_.fill(-1);
    for (size_t i = 0; i < chars_.size(); ++i) ids_[chars_[i]] = static_cast<int64_t>(i);
  }
  std::vector<int64_t> encode(std::string_view text) const override {
    std::vector<int64_t> out;
    out.reserve(text.size());
    for (unsigned char c : text) {
      if (ids_[c] < 0) {
        char buf[8];
        std::snprintf(buf, sizeof buf, "0x%02x", c);
        throw Error(std::string("character ") + (c >= 32 && c < 127 ? "'" + std::string(1, c) + "' " : "") +
                    "(byte " + buf + ") is not in this run's character vocabulary");
      }
      out.push_back(ids_[c]);
    }
    return out;
  }
  std::string decode(const std::vector<int64_t>& ids) const override {
    std::string out;
    out.reserve(ids.size());
    for (int64_t id : ids) {
      if (id < 0 || id >= static_cast<int64_t>(chars_.size()))
        throw Error("token id " + std::to_string(id) + " is outside the character vocabulary");
      out.push_back(static_cast<char>(chars_[id]));
    }
    return out;
  }
  int64_t vocab_size() const override { return static_cast<int64_t>(chars_.size()); }
  std::string kind() const override { return "char"; }
  std::string to_json() const override { return json{{"kind", "char"}, {"bytes", chars_}}.dump(); }

 private:
  std::vector<unsigned char> chars_;
  std::array<int64_t, 256> ids_;
};

class BPEAdapter : public Tokenizer {
 public:
  BPEAdapter(BPETokenizer bpe, std::string spec) : bpe_(std::move(bpe)), spec_(std::move(spec)) {}
  std::vector<int64_t> encode(std::string_view text) const override { return bpe_.encode(text); }
  std::string decode(const std::vector<int64_t>& ids) const override { return bpe_.decode(ids); }
  int64_t vocab_size() const override { return bpe_.vocab_size(); }
  std::string kind() const override { return "gpt2"; }
  std::string to_json() const override { return json{{"kind", "gpt2"}, {"spec", spec_}}.dump(); }
  int64_t eos_id() const override { return bpe_.eot_id(); }

 private:
  BPETokenizer bpe_;
  std::string spec_;
};

class IdsOnlyTokenizer : public Tokenizer {
 public:
  IdsOnlyTokenizer(int64_t vocab_size, std::string why) : vocab_size_(vocab_size), why_(std::move(why)) {}
  std::vector<int64_t> encode(std::string_view) const override { throw Error(why_); }
  std::string decode(const std::vector<int64_t>&) const override { throw Error(why_); }
  int64_t vocab_size() const override { return vocab_size_; }
  std::string kind() const override { return "ids"; }
  std::string to_json() const override { return json{{"kind", "ids"}, {"vocab_size", vocab_size_}, {"why", why_}}.dump(); }

 private:
  int64_t vocab_size_;
  std::string why_;
};

}  // namespace

std::shared_ptr<Tokenizer> make_ids_only_tokenizer(int64_t vocab_size, const std::string& why) {
  return std::make_shared<IdsOnlyTokenizer>(vocab_size, why);
}

std::shared_ptr<Tokenizer> make_char_tokenizer(std::string_view corpus) {
  std::array<bool, 256> seen{};
  for (unsigned char c : corpus) seen[c] = true;
  std::vector<unsigned char> chars;
  for (int c = 0; c < 256; ++c)
    if (seen[c]) chars.push_back(static_cast<unsigned char>(c));
  return std::make_shared<CharTokenizer>(std::move(chars));
}

std::shared_ptr<Tokenizer> make_bpe_tokenizer(const std::string& spec) {
  std::string path = spec;
  if (spec == "gpt2") {
    const char* dir = std::getenv("LINEARNEXUS_TOKENIZER_DIR");
    if (!dir)
      throw Error("tokenizer gpt2: set LINEARNEXUS_TOKENIZER_DIR to a folder holding encoder.json and vocab.bpe "
                  "(or name that folder or a .tiktoken file instead of gpt2)");
    path = dir;
  }
  return std::make_shared<BPEAdapter>(BPETokenizer::from_path(path), fs::absolute(path).string());
}

std::shared_ptr<Tokenizer> tokenizer_from_json(const std::string& text) {
  // Saved tokenizers come from checkpoints and meta.json files, which may be corrupt or hostile:
  // every field is checked here, so no JSON exception escapes as the whole message.
  json j;
  try {
    j = parse_json_limited(text, 2);
  } catch (const std::exception& e) {
    throw Error(std::string("the saved tokenizer is not valid JSON (") + e.what() + "); the file holding it is corrupt or edited");
  }
  auto field = [&](const char* key) {
    auto it = j.is_object() ? j.find(key) : j.end();
    return it == j.end() ? json() : *it;
  };
  const json kind = field("kind");
  if (kind == "char") {
    const json bytes = field("bytes");
    std::vector<unsigned char> chars;
    std::array<bool, 256> seen{};
    for (const auto& b : bytes.is_array() ? bytes : json::array()) {
      if (!b.is_number_integer() || b.get<int64_t>() < 0 || b.get<int64_t>() > 255 || seen[b.get<int64_t>()])
        throw Error("the saved char tokenizer's bytes hold " + b.dump() +
                    ", not a distinct byte value 0-255; the file holding it is corrupt or edited");
      seen[b.get<int64_t>()] = true;
      chars.push_back(static_cast<unsigned char>(b.get<int64_t>()));
    }
    if (chars.empty()) throw Error("the saved char tokenizer has no bytes list; the file holding it is corrupt or edited");
    return std::make_shared<CharTokenizer>(std::move(chars));
  }
  if (kind == "gpt2" && field("spec").is_string()) return make_bpe_tokenizer(field("spec").get<std::string>());
  if (kind == "ids" && field("vocab_size").is_number_integer() && field("vocab_size").get<int64_t>() > 0 &&
      field("why").is_string())
    return make_ids_only_tokenizer(field("vocab_size").get<int64_t>(), field("why").get<std::string>());
  throw Error("the saved tokenizer is not {kind: char, bytes: [...]}, {kind: gpt2, spec: PATH} or {kind: ids, vocab_size: N} (kind " +
              kind.dump() + "); the file holding it is corrupt or edited");
}

}  // namespace linearnexus
