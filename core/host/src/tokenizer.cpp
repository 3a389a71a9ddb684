// Tokenizers: the character vocabulary, the byte-level BPE adapter (GPT-2 files, tiktoken, Hugging
// Face tokenizer.json), choosing one from a data.tokenizer value, and reading a saved one back.
#include "linearnexus/host/tokenizers.h"

#include <nlohmann/json.hpp>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include "linearnexus/host/atomic_file.h"
#include "linearnexus/host/bpe_tokenizer.h"
#include "linearnexus/host/read_file.h"
#include "linearnexus/error.h"
#include "bpe_files.h"
#include "hf_tokenizer.h"
#include "json_limits.h"
#include "sentencepiece_tokenizer.h"

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
        throw Error(std::string("character ") + (c >= 32 && c < 127 ? "'" + std::string(1, c) + "' " : "") + "(byte " +
                    buf + ") is not in this run's character vocabulary");
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

// kind "gpt2" (GPT-2's files or a .tiktoken file; saved as {kind, spec}) or "hf" (a tokenizer.json;
// saved as {kind, path}).
class BPEAdapter : public Tokenizer {
 public:
  BPEAdapter(BPETokenizer bpe, std::string kind, std::string path, std::string chat_template = "", int64_t bos = -1)
      : bpe_(std::move(bpe)),
        kind_(std::move(kind)),
        path_(std::move(path)),
        chat_template_(std::move(chat_template)),
        bos_(bos) {}
  std::vector<int64_t> encode(std::string_view text) const override { return bpe_.encode(text); }
  std::string decode(const std::vector<int64_t>& ids) const override { return bpe_.decode(ids); }
  int64_t vocab_size() const override { return bpe_.vocab_size(); }
  std::string kind() const override { return kind_; }
  std::string to_json() const override {
    return json{{"kind", kind_}, {kind_ == "gpt2" ? "spec" : "path", path_}}.dump();
  }
  int64_t eos_id() const override { return bpe_.eot_id(); }
  std::string chat_template() const override { return chat_template_; }
  int64_t bos_id() const override { return bos_; }

 private:
  BPETokenizer bpe_;
  std::string kind_, path_, chat_template_;
  int64_t bos_;
};

std::shared_ptr<Tokenizer> load_gpt2_kind(const std::string& path) {
  return std::make_shared<BPEAdapter>(BPETokenizer::from_path(path), "gpt2", fs::absolute(path).string());
}

std::shared_ptr<Tokenizer> load_hf_json(const std::string& path) {
  const std::string abs = fs::absolute(path).lexically_normal().string();
  const std::string folder = fs::path(abs).parent_path().string();
  const HFTokenizerConfig config = read_hf_tokenizer_config(folder);
  BPETokenizer bpe = BPETokenizer::from_vocab(read_hf_tokenizer_json(abs, config.eos_token));
  int64_t bos = -1;
  if (!config.bos_token.empty()) {
    const auto ids = bpe.encode(config.bos_token);  // an added token encodes to itself alone
    if (ids.size() != 1)
      throw Error("tokenizer: '" + (fs::path(folder) / "tokenizer_config.json").string() + "': bos_token '" +
                  config.bos_token + "' is not a token of '" + abs + "'");
    bos = ids[0];
  }
  return std::make_shared<BPEAdapter>(std::move(bpe), "hf", abs, config.chat_template, bos);
}

std::shared_ptr<Tokenizer> load_sentencepiece(const std::string& path) {
  const std::string abs = fs::absolute(path).lexically_normal().string();
  return make_sentencepiece_tokenizer(abs,
                                      read_hf_tokenizer_config(fs::path(abs).parent_path().string()).chat_template);
}

// A .json file: a Hugging Face tokenizer.json (it has "model"), or the {"kind": ...} a LinearNexus
// run saved as its tokenizer.json.
std::shared_ptr<Tokenizer> load_json_file(const std::string& path) {
  // A saved one is a few hundred bytes; a tokenizer.json of any use is larger than that, and is
  // parsed (once) by its reader, which also names the file when it is not valid JSON.
  std::error_code ec;
  if (fs::file_size(path, ec) < 4096) {
    const std::string text = read_tokenizer_file(path, "tokenizer file");
    json j;
    try {
      j = parse_json_limited(text, 8);
    } catch (const std::exception& e) {
      throw Error("tokenizer: '" + path + "' is not valid JSON (" + std::string(e.what()) + ")");
    }
    if (j.is_object() && j.contains("kind") && !j.contains("model"))
      return tokenizer_from_json(text, fs::path(path).parent_path().string());
  }
  return load_hf_json(path);
}

// A tokenizer file named in a saved tokenizer: relative to base_dir, and an absolute one that is
// gone looked for there too (a run or prepared folder that was moved or copied elsewhere).
std::string saved_path(const std::string& path, const std::string& base_dir) {
  std::error_code ec;
  if (base_dir.empty()) return path;
  const fs::path p(path);
  if (p.is_relative()) return (fs::path(base_dir) / p).string();
  if (!fs::exists(p, ec) && fs::exists(fs::path(base_dir) / p.filename(), ec))
    return (fs::path(base_dir) / p.filename()).string();
  return path;
}

class IdsOnlyTokenizer : public Tokenizer {
 public:
  IdsOnlyTokenizer(int64_t vocab_size, std::string why) : vocab_size_(vocab_size), why_(std::move(why)) {}
  std::vector<int64_t> encode(std::string_view) const override { throw Error(why_); }
  std::string decode(const std::vector<int64_t>&) const override { throw Error(why_); }
  int64_t vocab_size() const override { return vocab_size_; }
  std::string kind() const override { return "ids"; }
  std::string to_json() const override {
    return json{{"kind", "ids"}, {"vocab_size", vocab_size_}, {"why", why_}}.dump();
  }

 private:
  int64_t vocab_size_;
  std::string why_;
};

// A tokenizer saved (to_json) as `json` says: the files it reads were copied into a run folder and
// are named relative to it (keep_tokenizer_files).
class SavedAs : public Tokenizer {
 public:
  SavedAs(std::shared_ptr<Tokenizer> inner, std::string json) : inner_(std::move(inner)), json_(std::move(json)) {}
  std::vector<int64_t> encode(std::string_view text) const override { return inner_->encode(text); }
  std::string decode(const std::vector<int64_t>& ids) const override { return inner_->decode(ids); }
  int64_t vocab_size() const override { return inner_->vocab_size(); }
  std::string kind() const override { return inner_->kind(); }
  std::string to_json() const override { return json_; }
  int64_t eos_id() const override { return inner_->eos_id(); }
  int64_t bos_id() const override { return inner_->bos_id(); }
  std::string chat_template() const override { return inner_->chat_template(); }
  bool chunks_at_newlines() const override { return inner_->chunks_at_newlines(); }

 private:
  std::shared_ptr<Tokenizer> inner_;
  std::string json_;
};

// `from` copied to `to` (atomically), unless they are the same file already.
void copy_tokenizer_file(const fs::path& from, const fs::path& to) {
  std::error_code ec;
  if (fs::exists(to, ec) && fs::equivalent(from, to, ec)) return;
  AtomicFile out(to.string());
  out.stream() << read_file(from.string(), file_kind::kTokenizer);
  out.commit();
}

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

std::shared_ptr<Tokenizer> load_tokenizer(const std::string& spec) {
  if (spec == "gpt2") {
    const char* dir = std::getenv("LINEARNEXUS_TOKENIZER_DIR");
    if (!dir)
      throw Error(
          "tokenizer gpt2: set LINEARNEXUS_TOKENIZER_DIR to a folder holding encoder.json and vocab.bpe "
          "(or name that folder or a .tiktoken file instead of gpt2)");
    return load_gpt2_kind(dir);
  }
  std::error_code ec;
  const fs::path p(spec);
  // Whether a tokenizer file is there: a FIFO or device under its name is an error saying so (it is
  // never opened for reading: read_file.h), not a file that seems absent.
  auto present = [](const fs::path& file) {
    std::error_code e;
    if (fs::is_regular_file(file, e)) return true;
    if (!fs::exists(file, e)) return false;
    RegularFile check(file.string(), file_kind::kTokenizer);  // throws: what it is instead
    return true;
  };
  if (fs::is_directory(p, ec)) {
    const fs::path json_file = p / "tokenizer.json", model_file = p / "tokenizer.model";
    if (present(json_file)) {
      try {
        return load_json_file(json_file.string());
      } catch (const Error&) {
        // A Llama-2-style tokenizer.json (SentencePiece BPE) is not read; its tokenizer.model is.
        if (!present(model_file)) throw;
      }
    }
    if (present(model_file)) return load_sentencepiece(model_file.string());
    if (fs::exists(p / "encoder.json", ec)) return load_gpt2_kind(spec);
    throw Error("tokenizer: folder '" + spec +
                "' holds no tokenizer.json, tokenizer.model, or encoder.json + vocab.bpe");
  }
  if (!present(p))
    throw Error("tokenizer: '" + spec +
                "' does not exist; give char, gpt2, a tokenizer.json, tokenizer.model or "
                ".tiktoken file, or a folder holding one (a Hugging Face model or run folder)");
  if (p.extension() == ".tiktoken") return load_gpt2_kind(spec);
  if (p.extension() == ".model") return load_sentencepiece(spec);
  if (p.extension() == ".json") return load_json_file(spec);
  throw Error("tokenizer: '" + spec + "' is not a tokenizer.json, tokenizer.model or .tiktoken file");
}

std::shared_ptr<Tokenizer> keep_tokenizer_files(const std::shared_ptr<Tokenizer>& tok, const std::string& dir,
                                                const std::string& subdir) {
  const json saved = json::parse(tok->to_json(), nullptr, false);
  const std::string kind = saved.is_object() && saved.contains("kind") && saved.at("kind").is_string()
                               ? saved.at("kind").get<std::string>()
                               : "";
  const char* key = kind == "gpt2" ? "spec" : "path";
  if ((kind != "hf" && kind != "sentencepiece" && kind != "gpt2") || !saved.contains(key) || !saved.at(key).is_string())
    return tok;  // char and ids-only tokenizers are their JSON: no files
  std::string source = saved.at(key).get<std::string>();
  if (kind == "gpt2" && source == "gpt2")
    source = std::getenv("LINEARNEXUS_TOKENIZER_DIR") ? std::getenv("LINEARNEXUS_TOKENIZER_DIR") : "";
  if (source.empty() || fs::path(source).is_relative()) return tok;  // already saved relative to its folder
  const fs::path dst = subdir.empty() ? fs::path(dir) : fs::path(dir) / subdir;
  std::error_code ec;
  fs::create_directories(dst, ec);
  if (ec) throw Error("cannot create '" + dst.string() + "' for the tokenizer's files: " + ec.message());
  auto relative = [&](const std::string& name) { return subdir.empty() ? name : (fs::path(subdir) / name).string(); };
  const fs::path src(source);
  if (kind == "gpt2" && fs::is_directory(src)) {  // GPT-2's own release files
    for (const char* name : {"encoder.json", "vocab.bpe"}) copy_tokenizer_file(src / name, dst / name);
    return std::make_shared<SavedAs>(load_gpt2_kind(dst.string()),
                                     json{{"kind", kind}, {"spec", subdir.empty() ? "." : subdir}}.dump());
  }
  copy_tokenizer_file(src, dst / src.filename());
  // What the loaders read beside the file (bos/eos tokens, the chat template), and what hf-export
  // hands on to transformers.
  for (const char* side : {"tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                           "chat_template.jinja", "generation_config.json"})
    if (kind != "gpt2" && fs::exists(src.parent_path() / side, ec))
      copy_tokenizer_file(src.parent_path() / side, dst / side);
  const std::string copy = (dst / src.filename()).string();
  auto loaded = kind == "hf"              ? load_hf_json(copy)
                : kind == "sentencepiece" ? load_sentencepiece(copy)
                                          : load_gpt2_kind(copy);
  return std::make_shared<SavedAs>(loaded, json{{"kind", kind}, {key, relative(src.filename().string())}}.dump());
}

std::shared_ptr<Tokenizer> tokenizer_from_json(const std::string& text, const std::string& base_dir) {
  // Saved tokenizers come from checkpoints and meta.json files, which may be corrupt or hostile:
  // every field is checked here, so no JSON exception escapes as the whole message.
  json j;
  try {
    j = parse_json_limited(text, 2);
  } catch (const std::exception& e) {
    throw Error(std::string("the saved tokenizer is not valid JSON (") + e.what() +
                "); the file holding it is corrupt or edited");
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
    if (chars.empty())
      throw Error("the saved char tokenizer has no bytes list; the file holding it is corrupt or edited");
    return std::make_shared<CharTokenizer>(std::move(chars));
  }
  if (kind == "gpt2" && field("spec").is_string()) {
    const std::string spec = field("spec").get<std::string>();
    return spec == "gpt2" ? load_tokenizer(spec) : load_gpt2_kind(saved_path(spec, base_dir));
  }
  if (kind == "hf" && field("path").is_string())
    return load_hf_json(saved_path(field("path").get<std::string>(), base_dir));
  if (kind == "sentencepiece" && field("path").is_string())
    return load_sentencepiece(saved_path(field("path").get<std::string>(), base_dir));
  if (kind == "ids" && field("vocab_size").is_number_integer() && field("vocab_size").get<int64_t>() > 0 &&
      field("why").is_string())
    return make_ids_only_tokenizer(field("vocab_size").get<int64_t>(), field("why").get<std::string>());
  throw Error(
      "the saved tokenizer is none of {kind: char, bytes: [...]}, {kind: gpt2, spec: PATH}, {kind: hf, path: "
      "PATH}, {kind: sentencepiece, path: PATH}, {kind: ids, vocab_size: N} (kind " +
      kind.dump() + "); the file holding it is corrupt or edited");
}

}  // namespace linearnexus
