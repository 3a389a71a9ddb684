#pragma once
// Byte-level BPE that reproduces OpenAI's GPT-2 token ids exactly. Pure C++17 (PCRE2 for the
// pre-tokenizer regex, nlohmann-json for encoder.json): no LibTorch, so it is cheap to test and
// to use from data-loading code.
//
// Two sources describe the same vocabulary:
//   * encoder.json + vocab.bpe (OpenAI's GPT-2 release): token strings in GPT-2's printable
//     "byte encoder" alphabet, and the merges in priority order;
//   * a tiktoken rank file (r50k_base.tiktoken): base64(token bytes) + rank per line, where a
//     merge a+b exists with rank r whenever bytes(a)+bytes(b) is the token of rank r.
// A Hugging Face tokenizer.json for byte-level BPE (GPT-2, Llama-3, Qwen2, SmolLM; hf_tokenizer.cpp
// reads it into a BPEVocab) is a third. All load into one table of (left id, right id) -> (priority,
// merged id), so one BPE loop serves them all; what differs between them is data: the pre-tokenizer
// regexes, the added tokens matched before them, NFC normalization, and whether a piece that is
// itself a token skips the merges.
//
// Thread safety: a BPETokenizer is immutable apart from an internal word cache guarded by a
// shared mutex, so encode/decode may be called concurrently. Copies share the loaded tables.
#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "linearnexus/error.h"

namespace linearnexus {

// GPT-2's pre-tokenizer regex (also tiktoken's r50k_base and Hugging Face's ByteLevel use_regex).
extern const char* const kGpt2SplitPattern;

// A byte-level BPE vocabulary as a file describes it, before it is indexed.
struct BPEVocab {
  std::vector<std::string> tokens;             // id -> the token's bytes (added tokens: their text)
  std::vector<std::array<int32_t, 3>> merges;  // {left, right, merged} ids, best first
  std::vector<int32_t> added;                  // ids matched literally in the text, before splitting
  int32_t eot = -1;                            // end of text / document separator; -1: none
  std::vector<std::string> split_patterns;     // PCRE2 regexes; each splits the previous one's pieces
  bool nfc = false;                            // NFC-normalize text between added tokens (Qwen2)
  bool piece_lookup = false;                   // a piece that is a token is that token (ignore_merges)
  std::string source;                          // the file, named in errors
};

// A token string in GPT-2's printable byte alphabet (encoder.json, vocab.bpe, a Hugging Face
// ByteLevel vocabulary) -> its raw bytes; false if it is not one.
bool byte_level_to_bytes(std::string_view s, std::string& out);

class BPETokenizer {
 public:
  // Any vocabulary; checks it (all 256 bytes present, distinct ordinary tokens, merges in range,
  // patterns that compile) and throws Error naming vocab.source.
  static BPETokenizer from_vocab(BPEVocab vocab);
  // Load OpenAI's encoder.json + vocab.bpe. Throws Error naming the file on any problem.
  static BPETokenizer from_gpt2_files(const std::string& encoder_json, const std::string& vocab_bpe);
  // Load a tiktoken rank file (each line: base64(token bytes) SPACE rank), GPT-2's regex.
  // "<|endoftext|>" gets the id after the highest rank unless the file lists it itself.
  static BPETokenizer from_tiktoken_file(const std::string& path);
  // A directory holding encoder.json + vocab.bpe, or a .tiktoken file. Error names the paths tried.
  static BPETokenizer from_path(const std::string& path);

  // Any byte string (invalid UTF-8 too); added tokens in the text ("<|endoftext|>", "<|im_start|>")
  // become their ids, the leftmost and then longest match first, as Hugging Face matches them.
  std::vector<int64_t> encode(std::string_view text) const;
  // The same without added-token handling: "<|endoftext|>" is encoded as ordinary text.
  std::vector<int64_t> encode_ordinary(std::string_view text) const;
  // The tokens' raw bytes concatenated (may end inside a UTF-8 character). Out-of-range id: Error.
  std::string decode(const std::vector<int64_t>& ids) const;

  int64_t vocab_size() const;  // 50257 for GPT-2
  int64_t eot_id() const;      // 50256 for GPT-2; -1 when the vocabulary names none
  std::string token_bytes(int64_t id) const;

 private:
  struct Impl;  // the loaded tables, the compiled regex and the word cache (bpe_tokenizer.cpp)
  explicit BPETokenizer(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<const Impl> impl_;
};

}  // namespace linearnexus
