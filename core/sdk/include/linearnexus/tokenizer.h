#pragma once
// The tokenizer interface (the host makes them: host/tokenizers.h). A run saves its tokenizer
// (to_json) so sampling decodes identically.
#include <cstdint>
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
  virtual std::string kind() const = 0;  // "char", "gpt2", "hf", "sentencepiece", "ids"
  virtual std::string to_json() const = 0;
  virtual int64_t eos_id() const { return -1; }
  // The beginning-of-text token a model expects first (tokenizer_config.json's bos_token, a
  // SentencePiece model's <s>); -1 when there is none. encode() never adds it.
  virtual int64_t bos_id() const { return -1; }
  // The Jinja chat template a Hugging Face folder's tokenizer_config.json (or chat_template.jinja)
  // holds, kept verbatim; "" when there is none. LinearNexus stores it, it does not render it.
  virtual std::string chat_template() const { return {}; }
  // Whether text cut into chunks right after a "\n" that sits between two ASCII letters or digits
  // encodes to the ids of the whole (data prepare encodes big inputs in such chunks). True for the
  // regex pre-tokenizers; SentencePiece treats the start of each text specially, so not there.
  virtual bool chunks_at_newlines() const { return true; }
};

}  // namespace linearnexus
