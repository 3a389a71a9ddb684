#pragma once
// The deltanet and gated_deltanet blocks' Hugging Face adapters (hf_adapter.h): flash-linear-attention's
// DeltaNetForCausalLM (model_type delta_net) and GatedDeltaNetForCausalLM (model_type gated_deltanet).
#include <linearnexus/hf_adapter.h>

#include <memory>

namespace linearnexus {

std::shared_ptr<const HFAdapter> fla_deltanet_hf_adapter();
std::shared_ptr<const HFAdapter> fla_gated_deltanet_hf_adapter();

}  // namespace linearnexus
