#pragma once
// A run's metrics.jsonl: one JSON object per line, never a torn or lost line. Rank 0 of a training
// run (training_run.h) writes it.
#include <cstdint>
#include <fstream>
#include <string>

namespace linearnexus {

class MetricsLog {
 public:
  // Opens out_dir/metrics.jsonl for appending, first dropping the lines past `start_step` (a run
  // interrupted after its last checkpoint logged steps a resume repeats) and a torn last line, so
  // the file reads as one uninterrupted run. The file is read as a regular file (read_file.h).
  void open(const std::string& out_dir, int64_t start_step);
  // Appends one line. A failed write (a moment of full disk) is retried once after cutting what it
  // left of the line; a second failure cuts it again and is an Error saying training stopped so that
  // no metric is lost.
  void append(const std::string& line);
  bool is_open() const { return out_.is_open(); }

 private:
  std::string path_;
  std::ofstream out_;
};

}  // namespace linearnexus
