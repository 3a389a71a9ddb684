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
// Both load into one table of (left id, right id) -> (priority, merged id), so one BPE loop
// serves both.
//
// Thread safety: a BPETokenizer is immutable apart from an internal word cache guarded by a
// shared mutex, so encode/decode may be called concurrently. Copies share the loaded tables.
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "linearnexus/error.h"

namespace linearnexus {

class BPETokenizer {
 public:
  // Load OpenAI's encoder.json + vocab.bpe. Throws Error naming the file on any problem.
  static BPETokenizer from_gpt2_files(const std::string& encoder_json, const std::string& vocab_bpe);
  // Load a tiktoken rank file (each line: base64(token bytes) SPACE rank), GPT-2's regex.
  // "<|endoftext|>" gets the id after the highest rank unless the file lists it itself.
  static BPETokenizer from_tiktoken_file(const std::string& path);
  // A directory holding encoder.json + vocab.bpe, or a .tiktoken file. Error names the paths tried.
  static BPETokenizer from_path(const std::string& path);

  // Any byte string (invalid UTF-8 too); "<|endoftext|>" in the text becomes eot_id().
  std::vector<int64_t> encode(std::string_view text) const;
  // The same without special-token handling: "<|endoftext|>" is encoded as ordinary text.
  std::vector<int64_t> encode_ordinary(std::string_view text) const;
  // The tokens' raw bytes concatenated (may end inside a UTF-8 character). Out-of-range id: Error.
  std::string decode(const std::vector<int64_t>& ids) const;

  int64_t vocab_size() const;  // 50257 for GPT-2
  int64_t eot_id() const;      // 50256 for GPT-2
  std::string token_bytes(int64_t id) const;

 private:
  struct Impl;  // the loaded tables, the compiled regex and the word cache (bpe_tokenizer.cpp)
  explicit BPETokenizer(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<const Impl> impl_;
};

}  // namespace linearnexus
