#pragma once
// SentencePiece tokenizer.model files (Llama-2, TinyLlama, Mistral, Gemma), through Debian's
// libsentencepiece. Optional at build time: without the library (LINEARNEXUS_HAVE_SENTENCEPIECE
// unset) loading one is an Error saying how to get it. Core-internal; tokenizer.cpp's load_tokenizer
// is the way in.
#include <memory>
#include <string>

#include "linearnexus/tokenizer.h"

namespace linearnexus {

// Kind "sentencepiece", saved as {kind, path}. Errors name the file. (sentencepiece_available(),
// declared in tokenizer.h, says whether the library is there.)
std::shared_ptr<Tokenizer> make_sentencepiece_tokenizer(const std::string& model_path, std::string chat_template);

}  // namespace linearnexus
