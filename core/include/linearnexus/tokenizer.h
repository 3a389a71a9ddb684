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

// Byte-level character vocabulary: the distinct bytes of `corpus`, sorted.
std::shared_ptr<Tokenizer> make_char_tokenizer(std::string_view corpus);
// The tokenizer a data.tokenizer / --tokenizer value names (everything but "char"):
//   gpt2                  encoder.json + vocab.bpe from $LINEARNEXUS_TOKENIZER_DIR
//   FILE.tiktoken         a tiktoken rank file (GPT-2's regex)
//   tokenizer.json        a Hugging Face byte-level BPE (kind "hf"); a LinearNexus run's own
//                         tokenizer.json (what Tokenizer::to_json wrote) is read back as well
//   tokenizer.model       a SentencePiece model (kind "sentencepiece")
//   FOLDER                a Hugging Face model folder, an imported or trained run folder, or GPT-2's
//                         files: tokenizer.json (byte-level BPE), else tokenizer.model, else
//                         encoder.json + vocab.bpe. A chat template in tokenizer_config.json beside
//                         tokenizer.json / tokenizer.model is kept.
// Errors name the file and the key at fault.
std::shared_ptr<Tokenizer> load_tokenizer(const std::string& spec);
// Whether this build reads SentencePiece tokenizer.model files (libsentencepiece found by CMake).
bool sentencepiece_available();
// A vocabulary of `vocab_size` ids without a text mapping: a model imported without a tokenizer
// this build reads (`convert hf-import --no-tokenizer`). Token ids work (`eval --ids`); encode and
// decode throw Error(`why`), which says what to do.
std::shared_ptr<Tokenizer> make_ids_only_tokenizer(int64_t vocab_size, const std::string& why);
// Inverse of Tokenizer::to_json. A file path in it that is relative, or absolute but gone (the run
// folder moved), is looked for in `base_dir` (the folder of the checkpoint or meta.json holding it).
std::shared_ptr<Tokenizer> tokenizer_from_json(const std::string& json, const std::string& base_dir = "");

}  // namespace linearnexus
