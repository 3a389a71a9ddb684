#pragma once
// Hugging Face tokenizer files: tokenizer.json for byte-level BPE (GPT-2, Llama-3, Qwen2, SmolLM) and
// the strings kept from tokenizer_config.json. Core-internal and LibTorch-free; tokenizer.cpp's
// load_tokenizer is the way in.
#include <string>

#include "linearnexus/host/bpe_tokenizer.h"

namespace linearnexus {

struct HFTokenizerConfig {
  std::string chat_template;  // tokenizer_config.json's chat_template, else chat_template.jinja; "" = none
  std::string eos_token;      // the text of its eos_token; "" = none
  std::string bos_token;      // the text of its bos_token; "" = none
};

// `folder`/tokenizer_config.json and `folder`/chat_template.jinja, both optional. A file that is
// there but malformed is an Error naming it and the key.
HFTokenizerConfig read_hf_tokenizer_config(const std::string& folder);

// tokenizer.json -> BPEVocab: model (type BPE: vocab, merges as "a b" strings or [a, b] pairs,
// ignore_merges), normalizer (none or NFC), pre_tokenizer (Split / Digits / ByteLevel, alone or in a
// Sequence), decoder (ByteLevel) and added_tokens. `eos_token` (from the config) names the
// end-of-text token; without it "<|endoftext|>" is, when the vocabulary has it. Anything else (a
// WordPiece or Unigram model, a Metaspace pre-tokenizer, byte_fallback, a merge naming an unknown
// token) is an Error naming the file and the key.
BPEVocab read_hf_tokenizer_json(const std::string& path, const std::string& eos_token);

}  // namespace linearnexus
