#pragma once
// The interface between the core and liblinearnexus_sentencepiece.so, the one library that links
// libsentencepiece. Debian's libsentencepiece carries its own copy of protobuf-lite and exports it;
// linked into a process that also has LibTorch's libprotobuf, those symbols replace libprotobuf's own
// and the process crashes while starting (seen with Debian's libtorch). So the core loads the glue
// with dlopen(RTLD_LOCAL | RTLD_DEEPBIND) the first time a tokenizer.model is read: sentencepiece
// then binds to its own protobuf, and nothing else sees it. Calls cross through virtual functions
// (no symbol lookups but the one factory) and errors through strings (no exceptions across).
#include <string>
#include <string_view>
#include <vector>

namespace linearnexus {

struct SentencePieceModel {
  virtual ~SentencePieceModel() = default;
  // false and *error set on failure.
  virtual bool encode(std::string_view text, std::vector<int>* ids, std::string* error) const = 0;
  virtual bool decode(const std::vector<int>& ids, std::string* text, std::string* error) const = 0;
  virtual int piece_size() const = 0;
  virtual int eos_id() const = 0;
  virtual int bos_id() const = 0;
};

}  // namespace linearnexus

// The glue's one export: the model at `path`, or nullptr and *error set.
extern "C" linearnexus::SentencePieceModel* linearnexus_sentencepiece_load(const char* path, std::string* error);
