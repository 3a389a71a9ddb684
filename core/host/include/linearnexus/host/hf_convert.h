#pragma once
// Hugging Face checkpoints <-> LinearNexus run folders: `linearnexus convert hf-import / hf-export`.
// Architectures: GPT2LMHeadModel, LlamaForCausalLM, Qwen2ForCausalLM, MambaForCausalLM. The name and
// layout tables live in core/src/hf_architectures.cpp, one per architecture, used both ways.
#include <string>
#include <vector>

#include "linearnexus/host/config.h"

namespace linearnexus {

class PluginHost;
struct HFArchitecture;

struct HfImportOptions {
  // false (--no-tokenizer): import the weights with an ids-only vocabulary when the folder's
  // tokenizer is one this build cannot read (`eval --ids` works, text does not).
  bool tokenizer = true;
  // --tokenizer DIR: the tokenizer files come from this folder instead of the model's (a model
  // folder without them, or another tokenizer of the same vocabulary); "" = the model's folder.
  std::string tokenizer_dir;
};

// HF_DIR (config.json; model.safetensors, or model.safetensors.index.json and its shards; tokenizer
// files) -> OUT_DIR, a new run folder that `sample`, `eval` and trainer.init_from read:
// latest.safetensors (step 0; every weight fp32: bf16 and fp16 widen exactly), config.yaml, the
// Hugging Face tokenizer files as they were (hf_tokenizer_files()), and hf_import.json recording the
// source, architecture, source dtypes and tokenizer files. An unsupported architecture or option, a
// missing shard, a missing, unknown or misshapen tensor: Error naming the file and the tensor or key.
// config.json is checked against the weights present (layer count, embedding shape, then one layer)
// before the model is built, and the folder is written beside OUT_DIR and renamed into place last
// (atomic_file.h's StagedFolder). Returns a summary for the log.
std::string hf_import(const std::string& hf_dir, const std::string& out_dir, PluginHost& host,
                      const HfImportOptions& options = {});

// config.json's text (read from `config_path`) -> the experiment of the imported run: its model
// section as the architecture's adapter maps the config, named `name`; the architecture to
// `*architecture` when given. What hf_import reads first; also fuzzed (tests/fuzz). Errors name the
// file and the key.
Experiment hf_config_experiment(const std::string& config_text, const std::string& config_path, const std::string& name,
                                PluginHost& host, const HFArchitecture** architecture = nullptr);

// A run folder or checkpoint -> OUT_DIR with config.json, model.safetensors (fp32) and the run's
// tokenizer files, loadable by transformers' AutoModelForCausalLM (and AutoTokenizer when the run has
// Hugging Face tokenizer files or GPT-2's BPE). A model with no Hugging Face counterpart: Error naming
// the model key. Written beside OUT_DIR and renamed into place last: a killed or failed export leaves
// no folder that looks finished. Returns a summary for the log.
std::string hf_export(const std::string& run_dir, const std::string& out_dir, PluginHost& host);

// The tokenizer files import and export copy unchanged: tokenizer.json, tokenizer.model,
// tokenizer_config.json, special_tokens_map.json, added_tokens.json, vocab.json, merges.txt,
// generation_config.json.
const std::vector<std::string>& hf_tokenizer_files();

}  // namespace linearnexus
