#pragma once
// The plugin ABI, modelled on LLVM's pass-plugin API.
//
// Every plugin shared library exports exactly one C symbol, `linearnexus_plugin_info`, returning a
// LinearNexusPluginInfo. The host reads abi_version and torch_version *before* calling anything
// else and refuses the file on a mismatch; only then does it call register_plugin.
//
// The ABI number covers the SDK's headers (core/sdk/include/linearnexus, what `cmake --install`
// puts in include/linearnexus and the only headers a plugin sees) and nothing of the host. Bump
// LINEARNEXUS_PLUGIN_ABI_VERSION whenever one of them changes in a way that changes the binary
// layout a plugin sees: a class layout or virtual table (Block, Optimizer, Trainer, TrainingRun,
// Generator, Task, Registry, Params...), a factory or hook signature, an inline function's
// behaviour, or this struct. Adding a free function does not. docs/writing_plugins.md keeps the
// history.
#include <cstdint>

#include <torch/version.h>

#include "linearnexus/registry.h"

// 2: Block::parameter_roles and NamedParameter::role; the lr bookkeeping in the Optimizer base.
// 3: ModelDims::norm and norm_eps (model.norm), layers.h's Norm, ResidualMLP(block, dims, ...);
//    Block::graph_safe_decode; ForwardContext::slot and its static-decoding helpers; ModelState::slot;
//    LMModel's decoding engine.
// 4: the SDK apart from the host. Trainer::run(TrainingRun&) with TrainingRun an interface (the run's
//    model, optimizer_step for every trainer, add_trainable, make_generator...); Generator; Batch in
//    trainer.h; NamedParameter in param_role.h and LMModel::optimizer_parameters; LMModel::head and
//    no decoding engine; LayerState / ModelState::keep_in_place; Registration::hooks (BlockHooks: a
//    Hugging Face adapter, FLOPs per token); Task::sft_examples; the AdamW moment slots, YAML parsing
//    of params, tokenizer factories out of the SDK; rng.h; TrainingRun::val_batch and
//    rows_per_example (examples formats, DPO); ModelConfig::lora and LMModel's LoRA adapters
//    (lora.h); Trainer::check_start (validate's checks before a run).
#define LINEARNEXUS_PLUGIN_ABI_VERSION 4u
#define LINEARNEXUS_TORCH_VERSION TORCH_VERSION

extern "C" {
struct LinearNexusPluginInfo {
  uint32_t abi_version;       // LINEARNEXUS_PLUGIN_ABI_VERSION the plugin was built with
  const char* torch_version;  // TORCH_VERSION the plugin was built against
  const char* name;
  const char* version;
  const char* description;
  void (*register_plugin)(linearnexus::Registry* registry);
};
typedef const LinearNexusPluginInfo* (*LinearNexusPluginEntry)();
}

#define LINEARNEXUS_PLUGIN_ENTRY_SYMBOL "linearnexus_plugin_info"

// Define the entry point. REGISTER is a function `void f(linearnexus::Registry&)`.
#define LINEARNEXUS_PLUGIN(NAME, VERSION, DESCRIPTION, REGISTER)                                             \
  extern "C" __attribute__((visibility("default"))) const LinearNexusPluginInfo* linearnexus_plugin_info() { \
    static const LinearNexusPluginInfo info{LINEARNEXUS_PLUGIN_ABI_VERSION,                                  \
                                            LINEARNEXUS_TORCH_VERSION,                                       \
                                            NAME,                                                            \
                                            VERSION,                                                         \
                                            DESCRIPTION,                                                     \
                                            [](linearnexus::Registry* r) { REGISTER(*r); }};                 \
    return &info;                                                                                            \
  }
