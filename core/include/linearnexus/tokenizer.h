#pragma once
// Tokenizers. One interface; a run saves its tokenizer (to_json) so sampling decodes identically.
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace linearnexus {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  virtual std::vector<int64_t> encode(std::string_view text) const = 0;
  // Raw bytes; may end inside a UTF-8 character when the ids split one.
  virtual std::string decode(const std::vector<int64_t>& ids) const = 0;
  virtual int64_t vocab_size() const = 0;
  virtual std::string kind() const = 0;  // "char", "gpt2", "ids"
  virtual std::string to_json() const = 0;
  virtual int64_t eos_id() const { return -1; }
};

// Byte-level character vocabulary: the distinct bytes of `corpus`, sorted.
std::shared_ptr<Tokenizer> make_char_tokenizer(std::string_view corpus);
// "gpt2" (files from $LINEARNEXUS_TOKENIZER_DIR), a folder with encoder.json + vocab.bpe, or a
// .tiktoken file.
std::shared_ptr<Tokenizer> make_bpe_tokenizer(const std::string& spec);
// A vocabulary of `vocab_size` ids without a text mapping: a model imported without a tokenizer
// this build reads (`convert hf-import --no-tokenizer`). Token ids work (`eval --ids`); encode and
// decode throw Error(`why`), which says what to do.
std::shared_ptr<Tokenizer> make_ids_only_tokenizer(int64_t vocab_size, const std::string& why);
// Inverse of Tokenizer::to_json.
std::shared_ptr<Tokenizer> tokenizer_from_json(const std::string& json);

}  // namespace linearnexus
