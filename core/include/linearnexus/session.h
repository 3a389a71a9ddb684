#pragma once
// Turning a validated experiment into live objects: the model, data, optimizer and run folder a
// trainer needs, or a model restored from a checkpoint. The runner and the tests share these.
#include <memory>
#include <string>

#include "linearnexus/checkpoint.h"
#include "linearnexus/config.h"
#include "linearnexus/trainer.h"

namespace linearnexus {

// Process set-up for training, called first by the runner and the test programs:
//  * LibTorch's intra-op threads = the machine's cores ($LINEARNEXUS_NUM_THREADS overrides);
//    Debian's LibTorch defaults to one;
//  * malloc keeps freed memory (up to 1 GiB blocks) instead of returning it to the OS, so the
//    large activations and logits of every step reuse pages already mapped: first-touch page
//    faults made a fresh 200 MB logits tensor cost 0.6 s on our VMs, five times its matmul.
void init_runtime();

// The `device` key: "auto" -> cuda when available, else cpu; "cuda" without CUDA is an error.
at::Device resolve_device(const std::string& device);
// The `precision` key: fp32 -> kFloat; bf16 -> kBFloat16 on CUDA (LMModel::set_compute_dtype),
// an error on the CPU (bf16 matmuls there are slow and autocast is CUDA-only here).
at::ScalarType compute_dtype(const Experiment& exp, const at::Device& device);

struct RunSetup {
  TrainContext ctx;
  // The run's exclusive hold on out_dir (lock_run_folder), released when the setup is destroyed.
  std::shared_ptr<void> folder_lock;
  std::string describe() const;  // parameter count, data sizes, optimizer groups
};

// Seeds, loads data (reusing the tokenizer of the checkpoint being resumed), builds the model on
// its device and the optimizer, and creates out_dir. `exp` and `host` must outlive the result.
RunSetup prepare_run(const Experiment& exp, PluginHost& host);

// An exclusive lock on a run folder (flock on DIR/.lock, which records the holder's pid), held
// until the returned handle is dropped or the process ends, even by kill -9. A second run on the
// same folder gets an Error naming the folder and the holder's pid.
std::shared_ptr<void> lock_run_folder(const std::string& dir);

// The model's parameters by name, with the fused splits and the roles their blocks (and the model)
// declare; an undeclared parameter's role is left unset (role_of gives default_role).
std::vector<NamedParameter> named_parameters_of(const LMModel& model);

// A checkpoint's "plugins" metadata against the loaded plugins: a missing one throws Error naming the
// block, the plugin, its version and the search path; another version logs a warning naming both.
void check_checkpoint_plugins(const Metadata& metadata, const std::string& file, const PluginHost& host);

// A model checkpoint's metadata, as every writer stores it (training runs, `convert hf-import`):
// format, step, the resolved experiment, the tokenizer and the plugin (and version) of each block.
Metadata checkpoint_metadata(const LMModel& model, const Registry& registry, const std::string& config_yaml,
                             const Tokenizer& tokenizer, int64_t step);

// The tokenizer a checkpoint was trained with (its "tokenizer" metadata); Error naming the file
// when it is missing or unreadable.
std::shared_ptr<Tokenizer> checkpoint_tokenizer(const Metadata& metadata, const std::string& file);

struct LoadedModel {
  Experiment experiment;
  std::shared_ptr<LMModel> model;
  std::shared_ptr<Tokenizer> tokenizer;
  Metadata metadata;
  std::string file;
};
// A run folder or checkpoint file -> the model it holds (eval mode), its tokenizer and experiment.
// Checks the plugins that built it: a missing one is an error naming it and the search path, a
// different version a warning. The checkpoint's own plugins.paths are never loaded (a checkpoint is
// data): its blocks must be on the host's path.
LoadedModel load_model_from_checkpoint(const std::string& run_dir_or_file, PluginHost& host,
                                       const std::string& device = "cpu");

}  // namespace linearnexus
