#pragma once
// The mamba2 block's Hugging Face adapter (hf_adapter.h): Mamba2ForCausalLM is a model of mamba2 blocks.
#include <linearnexus/hf_adapter.h>

#include <memory>

namespace linearnexus {

std::shared_ptr<const HFAdapter> mamba2_hf_adapter();

}  // namespace linearnexus
