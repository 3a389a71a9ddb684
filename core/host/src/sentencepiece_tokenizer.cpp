// SentencePiece models through liblinearnexus_sentencepiece.so (sentencepiece_tokenizer.h; why it
// is loaded with dlopen: sentencepiece_glue.h).
#include "sentencepiece_tokenizer.h"

#include <dlfcn.h>

#include <filesystem>
#include <mutex>
#include <nlohmann/json.hpp>

#include "linearnexus/error.h"
#include "linearnexus/host/read_file.h"
#include "sentencepiece_glue.h"

namespace fs = std::filesystem;

namespace linearnexus {

#ifdef LINEARNEXUS_HAVE_SENTENCEPIECE

namespace {

using LoadFn = SentencePieceModel* (*)(const char*, std::string*);

// The glue library beside this one (lib/ in the build and the install), loaded once, never unloaded.
LoadFn glue_loader() {
  static std::once_flag once;
  static LoadFn load = nullptr;
  static std::string problem;
  std::call_once(once, [] {
    Dl_info self{};
    if (!dladdr(reinterpret_cast<void*>(&glue_loader), &self) || !self.dli_fname) {
      problem = "cannot locate liblinearnexus_core";
      return;
    }
    const std::string path = (fs::path(self.dli_fname).parent_path() / "liblinearnexus_sentencepiece.so").string();
    void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
    if (!handle) {
      problem = "cannot load " + path + ": " + dlerror();
      return;
    }
    load = reinterpret_cast<LoadFn>(dlsym(handle, "linearnexus_sentencepiece_load"));
    if (!load) problem = path + " lacks linearnexus_sentencepiece_load";
  });
  if (!load)
    throw Error("tokenizer: SentencePiece support is broken in this installation (" + problem +
                "); rebuild LinearNexus");
  return load;
}

class SentencePieceTokenizer : public Tokenizer {
 public:
  SentencePieceTokenizer(const std::string& path, std::string chat_template)
      : path_(path), chat_template_(std::move(chat_template)) {
    // libsentencepiece opens the path itself: the file is checked first as every tokenizer file is
    // (a regular file under the size limit: read_file.h), so a FIFO or device never reaches it.
    try {
      RegularFile check(path, file_kind::kTokenizer);
    } catch (const Error& e) {
      throw Error(std::string("tokenizer: ") + e.what());
    }
    std::string error;
    model_.reset(glue_loader()(path.c_str(), &error));
    if (!model_)
      throw Error("tokenizer: cannot load SentencePiece model '" + path + "': " + error +
                  " (is it a tokenizer.model file?)");
  }
  std::vector<int64_t> encode(std::string_view text) const override {
    std::vector<int> ids;
    std::string error;
    if (!model_->encode(text, &ids, &error))
      throw Error("tokenizer: SentencePiece '" + path_ + "' cannot encode the text: " + error);
    return {ids.begin(), ids.end()};
  }
  std::string decode(const std::vector<int64_t>& ids) const override {
    std::vector<int> narrow;
    narrow.reserve(ids.size());
    for (int64_t id : ids) {
      if (id < 0 || id >= vocab_size())
        throw Error("tokenizer: token id " + std::to_string(id) + " is outside the vocabulary (0.." +
                    std::to_string(vocab_size() - 1) + ")");
      narrow.push_back(static_cast<int>(id));
    }
    std::string out, error;
    if (!model_->decode(narrow, &out, &error))
      throw Error("tokenizer: SentencePiece '" + path_ + "' cannot decode: " + error);
    return out;
  }
  int64_t vocab_size() const override { return model_->piece_size(); }
  std::string kind() const override { return "sentencepiece"; }
  std::string to_json() const override { return nlohmann::json{{"kind", "sentencepiece"}, {"path", path_}}.dump(); }
  int64_t eos_id() const override { return model_->eos_id(); }
  int64_t bos_id() const override { return model_->bos_id(); }
  std::string chat_template() const override { return chat_template_; }
  // SentencePiece marks the start of every text it encodes (the "dummy prefix" space).
  bool chunks_at_newlines() const override { return false; }

 private:
  std::unique_ptr<SentencePieceModel> model_;
  std::string path_, chat_template_;
};

}  // namespace

std::shared_ptr<Tokenizer> make_sentencepiece_tokenizer(const std::string& model_path, std::string chat_template) {
  return std::make_shared<SentencePieceTokenizer>(model_path, std::move(chat_template));
}

bool sentencepiece_available() { return true; }

#else

std::shared_ptr<Tokenizer> make_sentencepiece_tokenizer(const std::string& model_path, std::string) {
  throw Error("tokenizer: '" + model_path +
              "' is a SentencePiece model, but this build has no libsentencepiece: "
              "install libsentencepiece-dev (scripts/setup.sh does) and rebuild");
}

bool sentencepiece_available() { return false; }

#endif

}  // namespace linearnexus
