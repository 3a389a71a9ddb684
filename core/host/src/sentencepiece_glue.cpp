// liblinearnexus_sentencepiece.so: libsentencepiece behind sentencepiece_glue.h (which says why it
// is a library of its own, loaded on demand).
#include "sentencepiece_glue.h"

#include <sentencepiece_processor.h>

namespace {

// The processor's Encode and Decode are const and keep no state between calls, so one instance
// serves data prepare's concurrent chunks.
class Model : public linearnexus::SentencePieceModel {
 public:
  bool load(const char* path, std::string* error) {
    const auto status = sp_.Load(path);
    if (!status.ok()) *error = status.ToString();
    return status.ok();
  }
  bool encode(std::string_view text, std::vector<int>* ids, std::string* error) const override {
    const auto status = sp_.Encode(text, ids);
    if (!status.ok()) *error = status.ToString();
    return status.ok();
  }
  bool decode(const std::vector<int>& ids, std::string* text, std::string* error) const override {
    const auto status = sp_.Decode(ids, text);
    if (!status.ok()) *error = status.ToString();
    return status.ok();
  }
  int piece_size() const override { return sp_.GetPieceSize(); }
  int eos_id() const override { return sp_.eos_id(); }
  int bos_id() const override { return sp_.bos_id(); }

 private:
  sentencepiece::SentencePieceProcessor sp_;
};

}  // namespace

extern "C" __attribute__((visibility("default"))) linearnexus::SentencePieceModel* linearnexus_sentencepiece_load(
    const char* path, std::string* error) {
  try {
    auto model = std::make_unique<Model>();
    if (!model->load(path, error)) return nullptr;
    return model.release();
  } catch (const std::exception& e) {
    *error = e.what();
    return nullptr;
  }
}
