#pragma once
// Turning a validated experiment into a training run: the model on its device, the data, the
// optimizer, the run folder, the checkpoint the run starts from (decided and read once, here), the
// data-parallel ranks. The runner and the tests share it.
#include <memory>
#include <optional>
#include <string>

#include "linearnexus/host/config.h"
#include "linearnexus/host/run_checkpoint.h"
#include "linearnexus/host/training_run.h"

namespace linearnexus {

class PluginHost;

// Where a run starts, decided once: trainer.resume (auto: out_dir's newest loadable checkpoint; a
// path: that one) continues a run; else trainer.init_from starts a fresh one from a checkpoint's
// weights; else random initialisation. out_dir holding checkpoints with resume "" is an Error.
// header_only: the checkpoints' headers and metadata alone (`validate`; nothing is created).
struct RunStart {
  std::optional<RunCheckpoint> resume_from, init_from;
  std::string init_file;  // trainer.init_from resolved to a file ("" = not set), resumed or not
};
RunStart choose_start(const Experiment& exp, const std::string& out_dir, bool header_only);

// sample.prompt must encode with the run's tokenizer (a char vocabulary may lack its characters):
// checked before training, so that the samples after it cannot fail.
void check_sample_prompt(const Experiment& exp, const Tokenizer& tokenizer);

// What every rank of a data-parallel run must share (Distributed::agree): each key of the resolved
// experiment, the data (sizes and a fingerprint of its tokens), the tokenizer, and the checkpoint the
// run starts from.
std::vector<std::pair<std::string, std::string>> run_identity(const Experiment& exp, const DataSplits& data,
                                                              const RunCheckpoint* start);

// Seeds, decides where the run starts (trainer.resume, trainer.init_from) and reads that checkpoint,
// loads data (with the checkpoint's tokenizer, so token ids stay the same), builds the model on its
// device and the optimizer, and creates and locks out_dir. `exp` and `host` must outlive the result.
std::unique_ptr<HostTrainingRun> prepare_run(const Experiment& exp, PluginHost& host);

}  // namespace linearnexus
