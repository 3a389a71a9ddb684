#pragma once
// The host's tokenizers (the interface is the SDK's tokenizer.h): the character vocabulary, GPT-2's
// BPE files, tiktoken, Hugging Face tokenizer.json, SentencePiece, and reading a saved one back.
#include <memory>
#include <string>
#include <string_view>

#include "linearnexus/tokenizer.h"

namespace linearnexus {

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
// The tokenizer `tok`, reading copies of its files kept in `dir` (in its folder `subdir`, "" = `dir`
// itself) and saving them (to_json) by paths relative to `dir`: a run or imported folder carries its
// tokenizer, and a copy of the folder reads its own files, never the original's. The files a loader
// reads beside the main one (tokenizer_config.json, chat_template.jinja...) come along; files already
// in place are not copied again. Character and ids-only tokenizers have no files: returned as they are.
std::shared_ptr<Tokenizer> keep_tokenizer_files(const std::shared_ptr<Tokenizer>& tok, const std::string& dir,
                                                const std::string& subdir);
// Inverse of Tokenizer::to_json. A file path in it that is relative, or absolute but gone (the run
// folder moved), is looked for in `base_dir` (the folder of the checkpoint or meta.json holding it).
std::shared_ptr<Tokenizer> tokenizer_from_json(const std::string& json, const std::string& base_dir = "");

}  // namespace linearnexus
