// Reading OpenAI's GPT-2 files and tiktoken rank files into a BPEVocab (bpe_files.h).
#include "bpe_files.h"

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <unordered_map>

#include "json_limits.h"
#include "linearnexus/host/read_file.h"

namespace linearnexus {

namespace {

constexpr std::string_view kEndOfText = "<|endoftext|>";

// A vocabulary being read, with its ordinary tokens' bytes -> id (merges are given as token text).
struct Loaded {
  BPEVocab vocab;
  std::unordered_map<std::string, int32_t> ids;
};

}  // namespace

std::string read_tokenizer_file(const std::string& path, const char* what) {
  try {
    return read_file(path, file_kind::kTokenizer);
  } catch (const Error& e) {
    throw Error("tokenizer: " + std::string(what) + ": " + e.what());
  }
}

namespace {

// Adds "<|endoftext|>" after the last id unless the vocabulary has it, and keeps it out of the
// ordinary lookup so text can only produce it through encode()'s special-token split.
void finish_vocab(Loaded& v, const std::string& path) {
  auto it = v.ids.find(std::string(kEndOfText));
  if (it != v.ids.end()) {
    v.vocab.eot = it->second;
    v.ids.erase(it);
  } else {
    v.vocab.eot = static_cast<int32_t>(v.vocab.tokens.size());
    v.vocab.tokens.emplace_back(kEndOfText);
  }
  v.vocab.added = {v.vocab.eot};
  v.vocab.source = path;
  v.vocab.split_patterns = {kGpt2SplitPattern};
  v.vocab.piece_lookup = true;
}

// Fills v.tokens from (bytes, id) pairs, requiring the ids to be exactly 0..n-1.
void set_tokens(Loaded& v, std::vector<std::pair<std::string, int64_t>> entries, const std::string& path) {
  v.vocab.tokens.assign(entries.size(), {});
  std::vector<bool> seen(entries.size(), false);
  for (auto& [bytes, id] : entries) {
    if (id < 0 || id >= static_cast<int64_t>(entries.size()) || seen[id])
      throw Error("tokenizer: '" + path + "' has a duplicate or out-of-range id " + std::to_string(id) + " (its " +
                  std::to_string(entries.size()) + " ids must be 0.." + std::to_string(entries.size() - 1) +
                  ", each once)");
    seen[id] = true;
    if (!v.ids.emplace(bytes, static_cast<int32_t>(id)).second)
      throw Error("tokenizer: '" + path + "' lists the same token twice (id " + std::to_string(id) + ")");
    v.vocab.tokens[id] = std::move(bytes);
  }
}

}  // namespace

BPEVocab load_gpt2_files(const std::string& encoder_path, const std::string& merges_path) {
  Loaded v;
  nlohmann::json enc;
  try {
    enc = parse_json_limited(read_tokenizer_file(encoder_path, "encoder.json"), 1);
  } catch (const std::exception& e) {
    throw Error("tokenizer: '" + encoder_path + "' is not valid JSON (" + e.what() + ")");
  }
  if (!enc.is_object() || enc.empty())
    throw Error("tokenizer: '" + encoder_path + "' must be a JSON object mapping token strings to ids");
  std::vector<std::pair<std::string, int64_t>> entries;
  std::string bytes;
  for (const auto& [key, value] : enc.items()) {
    if (!value.is_number_integer())
      throw Error("tokenizer: '" + encoder_path + "': the id of token '" + key + "' is not an integer");
    if (!byte_level_to_bytes(key, bytes))
      throw Error("tokenizer: '" + encoder_path + "': token '" + key + "' is not in GPT-2's byte alphabet");
    entries.emplace_back(bytes, value.get<int64_t>());
  }
  set_tokens(v, std::move(entries), encoder_path);

  // vocab.bpe: "#version: ..." then one merge per line, "left right", highest priority first.
  const std::string text = read_tokenizer_file(merges_path, "vocab.bpe");
  std::istringstream lines(text);
  std::string line, left, right;
  for (int lineno = 1; std::getline(lines, line); ++lineno) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty() || line.rfind("#version", 0) == 0) continue;
    const size_t sp = line.find(' ');
    const auto bad = [&](const std::string& why) {
      return Error("tokenizer: '" + merges_path + "' line " + std::to_string(lineno) + ": " + why);
    };
    if (sp == 0 || sp == std::string::npos || sp + 1 == line.size() || line.find(' ', sp + 1) != std::string::npos)
      throw bad("expected two tokens separated by one space, got '" + line + "'");
    if (!byte_level_to_bytes(std::string_view(line).substr(0, sp), left) ||
        !byte_level_to_bytes(std::string_view(line).substr(sp + 1), right))
      throw bad("'" + line + "' is not in GPT-2's byte alphabet");
    const auto a = v.ids.find(left), b = v.ids.find(right), ab = v.ids.find(left + right);
    if (a == v.ids.end() || b == v.ids.end() || ab == v.ids.end())
      throw bad("merge '" + line + "' uses or makes a token that is not in '" + encoder_path + "'");
    v.vocab.merges.push_back({a->second, b->second, ab->second});
  }
  if (v.vocab.merges.empty()) throw Error("tokenizer: '" + merges_path + "' holds no merges");
  finish_vocab(v, encoder_path);
  return std::move(v.vocab);
}

namespace {

// RFC 4648 base64 (with '=' padding, as tiktoken writes it); false on anything else.
bool base64_decode(std::string_view in, std::string& out) {
  constexpr std::string_view kAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  out.clear();
  if (in.empty() || in.size() % 4 != 0) return false;
  uint32_t acc = 0;
  int bits = 0;
  bool padding = false;
  for (size_t i = 0; i < in.size(); ++i) {
    if (in[i] == '=') {
      if (i + 2 < in.size()) return false;  // only the last one or two characters may be padding
      padding = true;
      continue;
    }
    const size_t d = kAlphabet.find(in[i]);
    if (d == std::string_view::npos || padding) return false;
    acc = (acc << 6) | static_cast<uint32_t>(d);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<char>((acc >> bits) & 0xFF));
    }
  }
  return true;
}

}  // namespace

BPEVocab load_tiktoken_file(const std::string& path) {
  Loaded v;
  const std::string text = read_tokenizer_file(path, "tiktoken file");
  std::istringstream lines(text);
  std::vector<std::pair<std::string, int64_t>> entries;
  std::string line, bytes;
  for (int lineno = 1; std::getline(lines, line); ++lineno) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) continue;
    const size_t sp = line.find(' ');
    int64_t rank = -1;
    size_t used = 0;
    try {
      if (sp != std::string::npos) rank = std::stoll(line.substr(sp + 1), &used);
    } catch (const std::exception&) {
    }
    if (sp == std::string::npos || used == 0 || sp + 1 + used != line.size() ||
        !base64_decode(std::string_view(line).substr(0, sp), bytes))
      throw Error("tokenizer: '" + path + "' line " + std::to_string(lineno) +
                  ": expected 'base64(token bytes) rank', got '" + line.substr(0, 80) + "'");
    entries.emplace_back(bytes, rank);
  }
  if (entries.empty()) throw Error("tokenizer: '" + path + "' holds no tokens");
  set_tokens(v, std::move(entries), path);
  finish_vocab(v, path);
  // tiktoken merges the adjacent pair whose concatenation is the lowest-ranked token. As a pair
  // table: every split of every token into two tokens is a merge, ranked as that token (ids ascend).
  for (int32_t id = 0; id < static_cast<int32_t>(v.vocab.tokens.size()); ++id) {
    const std::string& t = v.vocab.tokens[id];
    if (id == v.vocab.eot) continue;
    for (size_t k = 1; k < t.size(); ++k) {
      const auto a = v.ids.find(t.substr(0, k));
      if (a == v.ids.end()) continue;
      const auto b = v.ids.find(t.substr(k));
      if (b != v.ids.end()) v.vocab.merges.push_back({a->second, b->second, id});
    }
  }
  return std::move(v.vocab);
}

}  // namespace linearnexus
