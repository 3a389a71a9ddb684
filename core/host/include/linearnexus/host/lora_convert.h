#pragma once
// A LoRA run's adapters (model.lora, lora.h) out of LinearNexus: `linearnexus convert merge-lora`
// (a run folder whose weights are W0 + scale B A, without adapters) and `convert peft-export` (the
// adapters alone in PEFT's layout, for a PEFT user holding the base model in transformers).
#include <string>

namespace linearnexus {

class PluginHost;

// RUN (a run folder or checkpoint with adapters) -> OUT_DIR, a new run folder: latest.safetensors
// (step 0) with every adapted weight merged, config.yaml without model.lora, the run's Hugging Face
// tokenizer files, lora_merge.json (source, rank, alpha, the merged layers). Its logits are the LoRA
// model's. Returns a summary for the log.
std::string merge_lora(const std::string& run, const std::string& out_dir, PluginHost& host);

// RUN -> OUT_DIR with adapter_config.json and adapter_model.safetensors as PEFT writes them for the
// model's Hugging Face architecture (hf-export's: GPT2LMHeadModel, LlamaForCausalLM...): tensors
// "base_model.model.<module>.lora_A.weight" [r, in] and ".lora_B.weight" [out, r] in fp32, one pair
// per Hugging Face module (a fused qkv adapter becomes q_proj, k_proj and v_proj adapters sharing A,
// B split by rows: exactly the same update), target_modules the full module names, fan_in_fan_out
// for GPT-2's Conv1D weights, base_model_name_or_path the run's trainer.init_from (or the Hugging
// Face folder it was imported from). PeftModel.from_pretrained(base, OUT_DIR) then computes what the
// run does. Returns a summary for the log.
std::string peft_export(const std::string& run, const std::string& out_dir, PluginHost& host);

}  // namespace linearnexus
