// Byte-level BPE with GPT-2's exact behaviour. See bpe_tokenizer.h for the overview.
//
// Encoding a text: split off the added tokens (encode only), NFC-normalize the spans between them
// where the vocabulary asks for it, cut each span into "pieces" with the pre-tokenizer regexes (each
// regex splits the previous one's pieces), and run BPE on each piece's bytes. BPE starts
// from one token per byte and repeatedly merges the adjacent pair with the best (lowest)
// priority, leftmost first; a min-heap of candidate pairs over a linked list of symbols makes
// that O(n log n) per piece instead of GPT-2's rescan of every pair after each merge.
#include "linearnexus/host/bpe_tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <array>
#include <filesystem>
#include <mutex>
#include <queue>
#include <shared_mutex>
#include <unordered_map>

#ifdef LINEARNEXUS_HAVE_ICU
#include <unicode/normalizer2.h>
#include <unicode/unistr.h>
#endif

#include "bpe_files.h"
#include "linearnexus/log.h"

namespace fs = std::filesystem;

namespace linearnexus {

// With PCRE2_UCP, \s \p{L} \p{N} are Unicode.
const char* const kGpt2SplitPattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

namespace {

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

// What every file format loads into (BPEVocab says what the fields mean).
struct Vocab {
  std::vector<std::string> tokens;               // id -> bytes
  std::unordered_map<std::string, int32_t> ids;  // bytes -> id, ordinary tokens only
  std::unordered_map<uint64_t, Merge> merges;    // pair_key(left, right) -> merge
  int32_t eot = -1;
  std::vector<int32_t> added;
  std::vector<std::string> split_patterns;
  bool nfc = false;
  bool piece_lookup = false;
  std::string source;
};

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

}  // namespace

bool byte_level_to_bytes(std::string_view s, std::string& out) {
  static const std::array<int, 256 + 68> inv = gpt2_codepoint_to_byte();
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

namespace {

// NFC normalization (Qwen2's normalizer) through ICU. ASCII is always NFC, and so is text that is
// not valid UTF-8 left alone (Hugging Face never sees such text: Python strings are Unicode).
#ifdef LINEARNEXUS_HAVE_ICU
std::string nfc_normalize(std::string_view text) {
  if (std::all_of(text.begin(), text.end(), [](char c) { return static_cast<unsigned char>(c) < 0x80; }))
    return std::string(text);
  UErrorCode status = U_ZERO_ERROR;
  const icu::Normalizer2* nfc = icu::Normalizer2::getNFCInstance(status);
  const icu::UnicodeString u =
      icu::UnicodeString::fromUTF8(icu::StringPiece(text.data(), static_cast<int32_t>(text.size())));
  std::string round_trip;
  u.toUTF8String(round_trip);
  if (U_FAILURE(status) || round_trip != text) return std::string(text);  // invalid UTF-8: unchanged
  if (nfc->isNormalized(u, status) && U_SUCCESS(status)) return round_trip;
  std::string out;
  nfc->normalize(u, status).toUTF8String(out);
  return U_SUCCESS(status) ? out : std::string(text);
}
#endif

}  // namespace

struct BPETokenizer::Impl {
  using Regex = std::unique_ptr<pcre2_code, decltype(&pcre2_code_free)>;
  Vocab vocab;
  std::array<int32_t, 256> byte_id{};  // the single-byte tokens BPE starts from
  std::vector<Regex> regexes;          // vocab.split_patterns, compiled
  // The added tokens by first byte, longest first: a match at a position is the longest there.
  std::array<std::vector<int32_t>, 256> added_by_first_byte;

  mutable std::shared_mutex cache_mutex;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache;

  explicit Impl(Vocab v) : vocab(std::move(v)) {
    for (int b = 0; b < 256; ++b) byte_id[b] = vocab.ids.at(std::string(1, static_cast<char>(b)));
    for (const std::string& pattern : vocab.split_patterns) {
      int err = 0;
      PCRE2_SIZE offset = 0;
      // MATCH_INVALID_UTF: text may hold invalid UTF-8, which no pattern item then matches (we
      // encode those bytes as their own pieces) instead of pcre2_match refusing the whole subject.
      Regex regex(pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &err, &offset, nullptr),
                  &pcre2_code_free);
      if (!regex) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof msg);
        throw Error("tokenizer: '" + vocab.source + "': cannot compile the pre-tokenizer regex '" + pattern +
                    "' at offset " + std::to_string(offset) + ": " + reinterpret_cast<char*>(msg));
      }
      // JIT is several times faster; where it is unavailable pcre2_match falls back to the interpreter.
      pcre2_jit_compile(regex.get(), PCRE2_JIT_COMPLETE);
      regexes.push_back(std::move(regex));
    }
    for (int32_t id : vocab.added)
      if (!vocab.tokens[id].empty()) added_by_first_byte[static_cast<unsigned char>(vocab.tokens[id][0])].push_back(id);
    for (auto& ids : added_by_first_byte)
      std::stable_sort(ids.begin(), ids.end(),
                       [&](int32_t a, int32_t b) { return vocab.tokens[a].size() > vocab.tokens[b].size(); });
#ifndef LINEARNEXUS_HAVE_ICU
    if (vocab.nfc)
      log_warn("tokenizer: '" + vocab.source + "' asks for NFC normalization, but this build has no ICU " +
               "(libicu-dev): text is encoded unnormalized, so ids differ from Hugging Face's on text that is not NFC");
#endif
  }

  // The first added token in text[pos..]: its position and id, or (npos, -1).
  std::pair<size_t, int32_t> find_added(std::string_view text, size_t pos) const {
    if (vocab.added.empty()) return {std::string_view::npos, -1};
    for (size_t i = pos; i < text.size(); ++i)
      for (int32_t id : added_by_first_byte[static_cast<unsigned char>(text[i])])
        if (text.compare(i, vocab.tokens[id].size(), vocab.tokens[id]) == 0) return {i, id};
    return {std::string_view::npos, -1};
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
    // A piece that is itself a token is that token: tiktoken's rule, Hugging Face's ignore_merges
    // (Llama-3), and for GPT-2's files the same result as running the merges (every GPT-2 token's
    // bytes merge back into that token).
    std::string key(piece);
    if (const auto it = vocab.piece_lookup ? vocab.ids.find(key) : vocab.ids.end(); it != vocab.ids.end()) {
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

  // Normalization, regex pre-tokenization and BPE of a span with no added tokens.
  void encode_ordinary(std::string_view text, std::vector<int64_t>& out) const {
    if (text.empty()) return;
    // One ovector pair is all split() reads; it copies the match out before recursing, so every
    // level shares this one.
    std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)> md(pcre2_match_data_create(1, nullptr),
                                                                           &pcre2_match_data_free);
    if (!md) throw std::bad_alloc();
#ifdef LINEARNEXUS_HAVE_ICU
    if (vocab.nfc) {
      const std::string normalized = nfc_normalize(text);
      split(normalized, 0, md.get(), out);
      return;
    }
#endif
    split(text, 0, md.get(), out);
  }

  // Cuts `text` with regexes[level] (the matches and the gaps between them are pieces, Hugging
  // Face's "Isolated" split) and passes each piece on to the next regex, or to BPE after the last.
  void split(std::string_view text, size_t level, pcre2_match_data* md, std::vector<int64_t>& out) const {
    if (text.empty()) return;
    if (level == regexes.size()) return encode_piece(text, out);
    const pcre2_code* regex = regexes[level].get();
    const auto subject = reinterpret_cast<PCRE2_SPTR>(text.data());
    size_t pos = 0;
    while (pos < text.size()) {
      const int rc = pcre2_match(regex, subject, text.size(), pos, PCRE2_NOTEMPTY, md, nullptr);
      size_t start = text.size(), end = text.size();
      if (rc >= 0) {
        const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
        start = ov[0];
        end = ov[1];
      } else if (rc != PCRE2_ERROR_NOMATCH) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(rc, msg, sizeof msg);
        throw Error("tokenizer: regex matching failed: " + std::string(reinterpret_cast<char*>(msg)));
      }
      // A gap before the match (or the end) is a piece too: text a Split regex does not cover
      // (Digits' non-digits), or invalid UTF-8, which no pattern item matches.
      if (start > pos) split(text.substr(pos, start - pos), level + 1, md, out);
      if (end > start) split(text.substr(start, end - start), level + 1, md, out);
      pos = end;  // PCRE2_NOTEMPTY: a match is never empty, so this always advances
    }
  }
};

BPETokenizer BPETokenizer::from_vocab(BPEVocab in) {
  Vocab v;
  v.source = in.source;
  const auto n = static_cast<int64_t>(in.tokens.size());
  const auto bad_id = [&](int64_t id, const std::string& where) {
    if (id < 0 || id >= n)
      throw Error("tokenizer: '" + in.source + "': " + where + " names token id " + std::to_string(id) +
                  ", outside the vocabulary's 0.." + std::to_string(n - 1));
  };
  std::vector<bool> is_added(in.tokens.size(), false);
  for (int32_t id : in.added) {
    bad_id(id, "an added token");
    if (in.tokens[id].empty())
      throw Error("tokenizer: '" + in.source + "': added token " + std::to_string(id) + " is empty");
    is_added[id] = true;
  }
  if (in.eot >= 0) bad_id(in.eot, "the end-of-text token");
  for (int32_t id = 0; id < n; ++id)
    if (!is_added[id] && !v.ids.emplace(in.tokens[id], id).second)
      throw Error("tokenizer: '" + in.source + "': tokens " + std::to_string(v.ids.at(in.tokens[id])) + " and " +
                  std::to_string(id) + " have the same bytes");
  for (int b = 0; b < 256; ++b)
    if (!v.ids.count(std::string(1, static_cast<char>(b))))
      throw Error("tokenizer: '" + in.source + "' has no token for byte " + std::to_string(b) +
                  "; a byte-level BPE vocabulary needs all 256");
  int32_t priority = 0;
  for (const auto& [left, right, merged] : in.merges) {
    for (int32_t id : {left, right, merged}) bad_id(id, "merge " + std::to_string(priority));
    v.merges.emplace(pair_key(left, right), Merge{priority++, merged});  // first wins
  }
  v.tokens = std::move(in.tokens);
  v.added = std::move(in.added);
  v.eot = in.eot;
  v.split_patterns = std::move(in.split_patterns);
  v.nfc = in.nfc;
  v.piece_lookup = in.piece_lookup;
  return BPETokenizer(std::make_shared<const Impl>(std::move(v)));
}

BPETokenizer BPETokenizer::from_gpt2_files(const std::string& encoder_json, const std::string& vocab_bpe) {
  return from_vocab(load_gpt2_files(encoder_json, vocab_bpe));
}

BPETokenizer BPETokenizer::from_tiktoken_file(const std::string& path) { return from_vocab(load_tiktoken_file(path)); }

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
    const auto [at, id] = impl_->find_added(text, pos);
    impl_->encode_ordinary(text.substr(pos, at == std::string_view::npos ? at : at - pos), out);
    if (at == std::string_view::npos) break;
    out.push_back(id);
    pos = at + impl_->vocab.tokens[id].size();
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
