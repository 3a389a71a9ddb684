#pragma once
// Turning a validated experiment into a training run: the model on its device, the data, the
// optimizer, the run folder, the checkpoint the run starts from (decided and read once, here), the
// data-parallel ranks. The runner and the tests share it.
#include <memory>

#include "linearnexus/host/config.h"
#include "linearnexus/host/training_run.h"

namespace linearnexus {

class PluginHost;

// Seeds, decides where the run starts (trainer.resume, trainer.init_from) and reads that checkpoint,
// loads data (with the checkpoint's tokenizer, so token ids stay the same), builds the model on its
// device and the optimizer, and creates and locks out_dir. `exp` and `host` must outlive the result.
std::unique_ptr<HostTrainingRun> prepare_run(const Experiment& exp, PluginHost& host);

}  // namespace linearnexus
