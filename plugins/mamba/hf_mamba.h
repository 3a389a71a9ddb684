#pragma once
// The mamba block's Hugging Face adapter (hf_adapter.h): MambaForCausalLM is a model of mamba blocks.
#include <linearnexus/hf_adapter.h>

#include <memory>

namespace linearnexus {

std::shared_ptr<const HFAdapter> mamba_hf_adapter();

}  // namespace linearnexus
