#pragma once
// What the Hugging Face conversion tests share (test_hf_convert.cpp, test_hf_fla.cpp): a run's model
// tensors, a bit-for-bit comparison of two tensor maps, and a run folder holding a random model.
#include <torch/torch.h>

#include <memory>
#include <string>

#include "catch.h"
#include "linearnexus/host/run_checkpoint.h"
#include "linearnexus/host/tokenizers.h"
#include "test_util.h"

namespace lntest {

using namespace linearnexus;

inline TensorMap model_tensors_of(const std::string& run) {
  TensorMap out;
  for (auto& [k, v] : load_safetensors(resolve_checkpoint(run)).tensors)
    if (k.rfind("model.", 0) == 0) out[k] = v;
  return out;
}

inline void check_bit_equal(const TensorMap& a, const TensorMap& b) {
  REQUIRE(a.size() == b.size());
  for (const auto& [k, v] : a) {
    INFO(k);
    REQUIRE(b.count(k));
    CHECK(v.scalar_type() == b.at(k).scalar_type());
    CHECK(v.equal(b.at(k)));
  }
}

// A run folder holding a random model of `model_yaml` (every weight redrawn, so biases and norms are
// not their constant init), as a training run would write it.
inline std::string native_run(PluginHost& host, const std::string& model_yaml, const TempDir& t,
                              const std::string& name,
                              std::shared_ptr<Tokenizer> tok = make_char_tokenizer("abcdefghijklmnopqrstuvwxyz .,\n")) {
  Experiment e = parse("data: {path: x}\nmodel: " + model_yaml + "\n", host);
  LMModel model(e.model_config(tok->vocab_size()), host.registry());
  {
    torch::NoGradGuard g;
    for (auto& p : model.parameters()) p.normal_(0.0, 0.2);
  }
  const std::string dir = t / name;
  RunCheckpoint checkpoint(model, host.registry(), e.resolved_yaml, *tok, 7);
  CheckpointManager(dir, 0).save(checkpoint);
  return dir;
}

}  // namespace lntest
