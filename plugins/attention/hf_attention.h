#pragma once
// The attention block's Hugging Face adapter (hf_adapter.h): GPT2LMHeadModel, LlamaForCausalLM and
// Qwen2ForCausalLM are models of attention blocks.
#include <linearnexus/hf_adapter.h>

#include <memory>

namespace linearnexus {

std::shared_ptr<const HFAdapter> attention_hf_adapter();

}  // namespace linearnexus
