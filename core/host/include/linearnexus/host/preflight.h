#pragma once
// Checks of a run that train nothing, shared by `validate`, the `run --nproc` launcher and
// prepare_run (session.h), and building a model with errors that name the experiment's keys.
#include <memory>
#include <string>

#include "linearnexus/host/config.h"
#include "linearnexus/model.h"

namespace linearnexus {

class PluginHost;
class Registry;
class Task;
class Tokenizer;
struct DataSplits;

// The model of `config`. An allocation LibTorch cannot make (a width or vocabulary too large for
// this machine) is an Error naming `source` and the keys that size the tensor it failed on, not
// "DefaultCPUAllocator: can't allocate memory".
std::shared_ptr<LMModel> build_model(const ModelConfig& config, const Registry& registry, const std::string& source);
// Layer `layer` of `config` alone (its block, at the model's real width): the block's own checks
// (heads dividing the width...) for the cost of one layer.
std::shared_ptr<Block> build_block(const Registry& registry, const ModelConfig& config, int64_t layer,
                                   const std::string& source);

// The experiment's task (task:), for the trainers that draw prompts from one and data.path: task; an
// Error saying what to add when the experiment has none.
std::shared_ptr<Task> make_experiment_task(const Experiment& exp, const Registry& registry);

// A resumed or init_from run must see the token ids its checkpoint was trained on: `data_tokenizer`
// (what the data is tokenized with: the checkpoint's own for text data, a prepared folder's) against
// the checkpoint's. `data_desc` names the data.
void check_same_tokenizer(const Tokenizer& checkpoint, const std::string& checkpoint_file, const Experiment& exp,
                          const Tokenizer& data_tokenizer, const std::string& data_desc);

// Everything `run` checks before its first step, without training, downloading or writing
// anything, so that `validate` refuses what `run` refuses: the trainer's and optimizer's own checks,
// the device and precision, a data-parallel launch's variables, trainer.out_dir (a folder, writable,
// not in use, no checkpoints unless resuming), the checkpoint the run would start from (its header,
// metadata, plugins and tokenizer), the task, the data (files' existence, headers and sizes;
// prepared folders' meta.json and shard sizes; a char vocabulary from the text's bytes), the
// tokenizer, one layer of each block kind at the model's real width (the blocks' own checks), and
// the sample prompt against the vocabulary. Not checked: what needs the data tokenized with a BPE
// tokenizer (its token count), shards' SHA-256 (checked when run starts), a download.
void preflight(const Experiment& exp, PluginHost& host);

}  // namespace linearnexus
