// Byte-level BPE with GPT-2's exact behaviour. See bpe_tokenizer.h for the overview.
//
// Encoding a text: split off "<|endoftext|>" (encode only), cut each remaining span into
// "pieces" with GPT-2's pre-tokenizer regex, and run BPE on each piece's bytes. BPE starts
// from one token per byte and repeatedly merges the adjacent pair with the best (lowest)
// priority, leftmost first; a min-heap of candidate pairs over a linked list of symbols makes
// that O(n log n) per piece instead of GPT-2's rescan of every pair after each merge.
#include "linearnexus/bpe_tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <array>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <queue>
#include <shared_mutex>
#include <sstream>
#include <unordered_map>

#include "json_limits.h"

namespace fs = std::filesystem;

namespace linearnexus {

namespace {

// GPT-2's pre-tokenizer (also tiktoken's r50k_base). With PCRE2_UCP, \s \p{L} \p{N} are Unicode.
constexpr char kGpt2Pattern[] = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
constexpr std::string_view kEndOfText = "<|endoftext|>";
// The word cache is cleared when it grows past this many pieces (bounds memory on huge,
// diverse corpora), and pieces longer than kMaxCachedPiece bytes are never cached (long runs
// of spaces or letters rarely repeat).
constexpr size_t kMaxCacheEntries = 1 << 18;
constexpr size_t kMaxCachedPiece = 256;

struct Merge {
  int32_t priority;  // lower merges first
  int32_t id;        // the merged token
};

uint64_t pair_key(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}

// What both file formats load into.
struct Vocab {
  std::vector<std::string> tokens;               // id -> bytes
  std::unordered_map<std::string, int32_t> ids;  // bytes -> id, ordinary tokens only
  std::unordered_map<uint64_t, Merge> merges;    // pair_key(left, right) -> merge
  int32_t eot = -1;                              // id of "<|endoftext|>"
};

std::string read_file(const std::string& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("tokenizer: cannot open " + std::string(what) + " '" + path + "' (does it exist?)");
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// GPT-2's bytes_to_unicode(): the 188 printable Latin-1 bytes stand for themselves and the
// other 68 bytes (controls, space, DEL, NBSP, soft hyphen) become U+0100.. in byte order, so every
// token in encoder.json / vocab.bpe is a printable string. Returns the inverse: code point -> byte.
std::array<int, 256 + 68> gpt2_codepoint_to_byte() {
  std::array<int, 256 + 68> inv;
  inv.fill(-1);
  int shifted = 0;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    inv[printable ? b : 256 + shifted++] = b;
  }
  return inv;
}

// A token string in GPT-2's alphabet (UTF-8) -> its raw bytes; false if it is not one.
bool gpt2_string_to_bytes(std::string_view s, const std::array<int, 256 + 68>& inv, std::string& out) {
  out.clear();
  for (size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    uint32_t cp;
    if (c < 0x80) {
      cp = c;
      i += 1;
    } else if ((c & 0xE0) == 0xC0 && i + 1 < s.size()) {  // the alphabet needs at most 2 bytes
      cp = ((c & 0x1Fu) << 6) | (static_cast<unsigned char>(s[i + 1]) & 0x3Fu);
      i += 2;
    } else {
      return false;
    }
    if (cp >= inv.size() || inv[cp] < 0) return false;
    out.push_back(static_cast<char>(inv[cp]));
  }
  return true;
}

// Adds "<|endoftext|>" after the last id unless the vocabulary has it, and keeps it out of the
// ordinary lookup so text can only produce it through encode()'s special-token split.
void finish_vocab(Vocab& v, const std::string& path) {
  auto it = v.ids.find(std::string(kEndOfText));
  if (it != v.ids.end()) {
    v.eot = it->second;
    v.ids.erase(it);
  } else {
    v.eot = static_cast<int32_t>(v.tokens.size());
    v.tokens.emplace_back(kEndOfText);
  }
  for (int b = 0; b < 256; ++b)
    if (!v.ids.count(std::string(1, static_cast<char>(b))))
      throw Error("tokenizer: '" + path + "' has no token for byte " + std::to_string(b) +
                  "; a byte-level BPE vocabulary needs all 256");
}

// Fills v.tokens from (bytes, id) pairs, requiring the ids to be exactly 0..n-1.
void set_tokens(Vocab& v, std::vector<std::pair<std::string, int64_t>> entries, const std::string& path) {
  v.tokens.assign(entries.size(), {});
  std::vector<bool> seen(entries.size(), false);
  for (auto& [bytes, id] : entries) {
    if (id < 0 || id >= static_cast<int64_t>(entries.size()) || seen[id])
      throw Error("tokenizer: '" + path + "' has a duplicate or out-of-range id " + std::to_string(id) + " (its " +
                  std::to_string(entries.size()) + " ids must be 0.." + std::to_string(entries.size() - 1) +
                  ", each once)");
    seen[id] = true;
    if (!v.ids.emplace(bytes, static_cast<int32_t>(id)).second)
      throw Error("tokenizer: '" + path + "' lists the same token twice (id " + std::to_string(id) + ")");
    v.tokens[id] = std::move(bytes);
  }
}

Vocab load_gpt2(const std::string& encoder_path, const std::string& merges_path) {
  const auto inv = gpt2_codepoint_to_byte();
  Vocab v;
  nlohmann::json enc;
  try {
    enc = parse_json_limited(read_file(encoder_path, "encoder.json"), 1);
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
    if (!gpt2_string_to_bytes(key, inv, bytes))
      throw Error("tokenizer: '" + encoder_path + "': token '" + key + "' is not in GPT-2's byte alphabet");
    entries.emplace_back(bytes, value.get<int64_t>());
  }
  set_tokens(v, std::move(entries), encoder_path);

  // vocab.bpe: "#version: ..." then one merge per line, "left right", highest priority first.
  const std::string text = read_file(merges_path, "vocab.bpe");
  std::istringstream lines(text);
  std::string line, left, right;
  int32_t priority = 0;
  for (int lineno = 1; std::getline(lines, line); ++lineno) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty() || line.rfind("#version", 0) == 0) continue;
    const size_t sp = line.find(' ');
    const auto bad = [&](const std::string& why) {
      return Error("tokenizer: '" + merges_path + "' line " + std::to_string(lineno) + ": " + why);
    };
    if (sp == 0 || sp == std::string::npos || sp + 1 == line.size() || line.find(' ', sp + 1) != std::string::npos)
      throw bad("expected two tokens separated by one space, got '" + line + "'");
    if (!gpt2_string_to_bytes(std::string_view(line).substr(0, sp), inv, left) ||
        !gpt2_string_to_bytes(std::string_view(line).substr(sp + 1), inv, right))
      throw bad("'" + line + "' is not in GPT-2's byte alphabet");
    const auto a = v.ids.find(left), b = v.ids.find(right), ab = v.ids.find(left + right);
    if (a == v.ids.end() || b == v.ids.end() || ab == v.ids.end())
      throw bad("merge '" + line + "' uses or makes a token that is not in '" + encoder_path + "'");
    v.merges.emplace(pair_key(a->second, b->second), Merge{priority++, ab->second});  // first wins
  }
  if (v.merges.empty()) throw Error("tokenizer: '" + merges_path + "' holds no merges");
  finish_vocab(v, encoder_path);
  return v;
}

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

Vocab load_tiktoken(const std::string& path) {
  Vocab v;
  const std::string text = read_file(path, "tiktoken file");
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
  // table: every split of every token into two tokens is a merge, with that token's rank.
  for (int32_t id = 0; id < static_cast<int32_t>(v.tokens.size()); ++id) {
    const std::string& t = v.tokens[id];
    if (id == v.eot) continue;
    for (size_t k = 1; k < t.size(); ++k) {
      const auto a = v.ids.find(t.substr(0, k));
      if (a == v.ids.end()) continue;
      const auto b = v.ids.find(t.substr(k));
      if (b != v.ids.end()) v.merges.emplace(pair_key(a->second, b->second), Merge{id, id});
    }
  }
  return v;
}

}  // namespace

struct BPETokenizer::Impl {
  Vocab vocab;
  std::array<int32_t, 256> byte_id{};  // the single-byte tokens BPE starts from
  std::unique_ptr<pcre2_code, decltype(&pcre2_code_free)> regex{nullptr, &pcre2_code_free};

  mutable std::shared_mutex cache_mutex;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache;

  explicit Impl(Vocab v) : vocab(std::move(v)) {
    for (int b = 0; b < 256; ++b) byte_id[b] = vocab.ids.at(std::string(1, static_cast<char>(b)));
    int err = 0;
    PCRE2_SIZE offset = 0;
    // MATCH_INVALID_UTF: text may hold invalid UTF-8, which no pattern item then matches (we
    // encode those bytes as their own pieces) instead of pcre2_match refusing the whole subject.
    regex.reset(pcre2_compile(reinterpret_cast<PCRE2_SPTR>(kGpt2Pattern), PCRE2_ZERO_TERMINATED,
                              PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &err, &offset, nullptr));
    if (!regex) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(err, msg, sizeof msg);
      throw Error("tokenizer: cannot compile the GPT-2 regex: " + std::string(reinterpret_cast<char*>(msg)));
    }
    // JIT is several times faster; where it is unavailable pcre2_match falls back to the interpreter.
    pcre2_jit_compile(regex.get(), PCRE2_JIT_COMPLETE);
  }

  const std::string& token(int64_t id) const {
    if (id < 0 || id >= static_cast<int64_t>(vocab.tokens.size()))
      throw Error("tokenizer: token id " + std::to_string(id) + " is outside the vocabulary (0.." +
                  std::to_string(vocab.tokens.size() - 1) + ")");
    return vocab.tokens[id];
  }

  // BPE on one piece's bytes, appending its token ids to `out`.
  void bpe(std::string_view piece, std::vector<int32_t>& out) const {
    const int32_t n = static_cast<int32_t>(piece.size());
    // Symbols as a doubly linked list over the piece's byte positions; a merged-away symbol has id -1.
    struct Symbol {
      int32_t id, prev, next;
    };
    std::vector<Symbol> sym(n);
    for (int32_t i = 0; i < n; ++i)
      sym[i] = {byte_id[static_cast<unsigned char>(piece[i])], i - 1, i + 1 < n ? i + 1 : -1};
    // Candidate merges, best priority first and leftmost among equals (GPT-2 merges a bigram's
    // occurrences left to right). Entries go stale when a side changes; they are checked on pop.
    struct Candidate {
      uint64_t order;  // priority << 32 | left position
      int32_t left_id, right_id, merged;
      bool operator>(const Candidate& o) const { return order > o.order; }
    };
    std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> heap;
    const auto consider = [&](int32_t left) {
      if (left < 0 || sym[left].next < 0) return;
      const int32_t right = sym[left].next;
      const auto it = vocab.merges.find(pair_key(sym[left].id, sym[right].id));
      if (it == vocab.merges.end()) return;
      heap.push({(static_cast<uint64_t>(it->second.priority) << 32) | static_cast<uint32_t>(left), sym[left].id,
                 sym[right].id, it->second.id});
    };
    for (int32_t i = 0; i + 1 < n; ++i) consider(i);
    while (!heap.empty()) {
      const Candidate c = heap.top();
      heap.pop();
      const auto left = static_cast<int32_t>(c.order & 0xFFFFFFFFu);
      // A symbol's id changes whenever its span grows, so matching ids mean the pair is intact.
      if (sym[left].id != c.left_id) continue;
      const int32_t right = sym[left].next;
      if (right < 0 || sym[right].id != c.right_id) continue;
      sym[left].id = c.merged;
      sym[left].next = sym[right].next;
      if (sym[right].next >= 0) sym[sym[right].next].prev = left;
      sym[right].id = -1;
      consider(sym[left].prev);
      consider(left);
    }
    for (int32_t i = 0; i >= 0 && i < n; i = sym[i].next) out.push_back(sym[i].id);
  }

  void encode_piece(std::string_view piece, std::vector<int64_t>& out) const {
    // A piece that is itself a token is that token: tiktoken's rule, and for GPT-2's files the
    // same result as running the merges (every GPT-2 token's bytes merge back into that token).
    std::string key(piece);
    if (const auto it = vocab.ids.find(key); it != vocab.ids.end()) {
      out.push_back(it->second);
      return;
    }
    const bool cacheable = piece.size() <= kMaxCachedPiece;
    if (cacheable) {
      std::shared_lock<std::shared_mutex> lock(cache_mutex);
      if (const auto it = cache.find(key); it != cache.end()) {
        out.insert(out.end(), it->second.begin(), it->second.end());
        return;
      }
    }
    std::vector<int32_t> ids;
    bpe(piece, ids);
    out.insert(out.end(), ids.begin(), ids.end());
    if (cacheable) {
      std::unique_lock<std::shared_mutex> lock(cache_mutex);
      if (cache.size() >= kMaxCacheEntries) cache.clear();
      cache.emplace(std::move(key), std::move(ids));
    }
  }

  // Regex pre-tokenization + BPE of a span with no special tokens.
  void encode_ordinary(std::string_view text, std::vector<int64_t>& out) const {
    if (text.empty()) return;
    std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)> md(
        pcre2_match_data_create_from_pattern(regex.get(), nullptr), &pcre2_match_data_free);
    if (!md) throw std::bad_alloc();
    const auto subject = reinterpret_cast<PCRE2_SPTR>(text.data());
    size_t pos = 0;
    while (pos < text.size()) {
      const int rc = pcre2_match(regex.get(), subject, text.size(), pos, 0, md.get(), nullptr);
      size_t start = text.size(), end = text.size();
      if (rc >= 0) {
        const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md.get());
        start = ov[0];
        end = ov[1];
      } else if (rc != PCRE2_ERROR_NOMATCH) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(rc, msg, sizeof msg);
        throw Error("tokenizer: regex matching failed: " + std::string(reinterpret_cast<char*>(msg)));
      }
      // Every valid character matches some alternative, so a gap before the match (or the end)
      // is invalid UTF-8: BPE those raw bytes as a piece of their own so decode restores them.
      if (start > pos) encode_piece(text.substr(pos, start - pos), out);
      if (end > start) encode_piece(text.substr(start, end - start), out);
      pos = end;  // the pattern cannot match empty, so this always advances
    }
  }
};

BPETokenizer BPETokenizer::from_gpt2_files(const std::string& encoder_json, const std::string& vocab_bpe) {
  return BPETokenizer(std::make_shared<const Impl>(load_gpt2(encoder_json, vocab_bpe)));
}

BPETokenizer BPETokenizer::from_tiktoken_file(const std::string& path) {
  return BPETokenizer(std::make_shared<const Impl>(load_tiktoken(path)));
}

BPETokenizer BPETokenizer::from_path(const std::string& path) {
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    const std::string enc = (fs::path(path) / "encoder.json").string();
    const std::string bpe = (fs::path(path) / "vocab.bpe").string();
    if (fs::exists(enc, ec) && fs::exists(bpe, ec)) return from_gpt2_files(enc, bpe);
    throw Error("tokenizer: folder '" + path + "' lacks GPT-2's files (tried '" + enc + "' and '" + bpe + "')");
  }
  if (fs::is_regular_file(path, ec) && fs::path(path).extension() == ".tiktoken") return from_tiktoken_file(path);
  throw Error("tokenizer: '" + path + "' is neither a folder holding encoder.json + vocab.bpe nor a .tiktoken file" +
              (fs::exists(path, ec) ? "" : " (it does not exist)"));
}

std::vector<int64_t> BPETokenizer::encode(std::string_view text) const {
  std::vector<int64_t> out;
  out.reserve(text.size() / 3);
  for (size_t pos = 0;;) {
    const size_t special = text.find(kEndOfText, pos);
    impl_->encode_ordinary(text.substr(pos, special == std::string_view::npos ? special : special - pos), out);
    if (special == std::string_view::npos) break;
    out.push_back(impl_->vocab.eot);
    pos = special + kEndOfText.size();
  }
  return out;
}

std::vector<int64_t> BPETokenizer::encode_ordinary(std::string_view text) const {
  std::vector<int64_t> out;
  out.reserve(text.size() / 3);
  impl_->encode_ordinary(text, out);
  return out;
}

std::string BPETokenizer::decode(const std::vector<int64_t>& ids) const {
  std::string out;
  for (int64_t id : ids) out += impl_->token(id);
  return out;
}

int64_t BPETokenizer::vocab_size() const { return static_cast<int64_t>(impl_->vocab.tokens.size()); }

int64_t BPETokenizer::eot_id() const { return impl_->vocab.eot; }

std::string BPETokenizer::token_bytes(int64_t id) const { return impl_->token(id); }

}  // namespace linearnexus
