#pragma once
// A training run's hold on its folder (trainer.out_dir) from prepare_run (session.h) to the run's
// end: the folder created, locked (runtime.h, lock_run_folder), the console's log appended to
// train.log; at the end the lock file goes, and a folder that this run created but never trained in
// (the experiment failed a check after the folder was made: data missing, a prompt the vocabulary
// lacks, a trainer's refusal) goes with everything written into it, so a failed start leaves nothing.
#include <memory>
#include <string>

namespace linearnexus {

class RunFolder {
 public:
  // Creates `dir` and the folders above it that are missing. The main rank (data-parallel rank 0,
  // which writes the folder) also locks it and appends the log to dir/train.log.
  RunFolder(const std::string& dir, bool main_rank);
  ~RunFolder();
  RunFolder(const RunFolder&) = delete;
  RunFolder& operator=(const RunFolder&) = delete;
  // Training has begun (TrainingRun::resume): the folder stays, whatever happens next.
  void keep() { keep_ = true; }

 private:
  std::string created_;  // the topmost folder this process created ("" = none, or not the main rank)
  std::shared_ptr<void> lock_, log_;
  bool keep_ = false;
};

}  // namespace linearnexus
