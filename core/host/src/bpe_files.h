#pragma once
// The byte-level BPE files read besides tokenizer.json (hf_tokenizer.h): OpenAI's GPT-2 release
// (encoder.json + vocab.bpe) and tiktoken rank files. Each becomes a BPEVocab for
// BPETokenizer::from_vocab. Core-internal, LibTorch-free.
#include <string>

#include "linearnexus/host/bpe_tokenizer.h"

namespace linearnexus {

// The whole file; Error naming `what` and the path when it cannot be read.
std::string read_tokenizer_file(const std::string& path, const char* what);
// "<|endoftext|>" is the end-of-text token and the one added token; GPT-2's regex splits.
BPEVocab load_gpt2_files(const std::string& encoder_json, const std::string& vocab_bpe);
// "<|endoftext|>" gets the id after the highest rank unless the file lists it itself.
BPEVocab load_tiktoken_file(const std::string& path);

}  // namespace linearnexus
