#pragma once
// What a training run reports (training_run.h): metrics lines to the trackers of trainer.trackers
// (metrics.jsonl with each line's wall-clock time; TensorBoard event files with the experiment as
// text) and the console's progress line with its ETA. Rank 0 writes; other ranks' calls do nothing.
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "linearnexus/host/metrics_log.h"

namespace linearnexus {

struct Experiment;
class TensorBoardWriter;

class RunLog {
 public:
  RunLog(const Experiment& experiment, std::string out_dir, bool main_rank);
  ~RunLog();
  // The run starts after `start_step` completed steps: metrics.jsonl cut to them, a new TensorBoard
  // file (SessionLog START on a resume, then the experiment as text), the ETA's clock started.
  // `resumed_config`: the resolved experiment the checkpoint was saved with (a resume), else "";
  // a different trainer.max_steps there gets a warning (the lr schedule spans max_steps).
  void start(int64_t start_step, const std::string& resumed_config);
  // One metrics line (m["step"] its step) to every tracker.
  void write(const std::map<std::string, double>& m);
  // The console line of a metrics line: "step S/N | metric v | ... | lr | tok/s | mfu | ms/step | ETA"
  // (the throughput and ETA parts only where m has them). The ETA is the average step time since
  // start() times the steps left.
  void print(const std::map<std::string, double>& m) const;

 private:
  const Experiment& experiment_;
  const std::string out_dir_;
  const bool main_;
  MetricsLog jsonl_;
  std::unique_ptr<TensorBoardWriter> tensorboard_;
  int64_t start_step_ = 0;
  std::chrono::steady_clock::time_point t_start_ = std::chrono::steady_clock::now();
};

}  // namespace linearnexus
