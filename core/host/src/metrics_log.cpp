// metrics.jsonl, whole lines only (metrics_log.h).
#include "linearnexus/host/metrics_log.h"

#include <nlohmann/json.hpp>

#include <filesystem>
#include <sstream>

#include "linearnexus/error.h"
#include "linearnexus/host/read_file.h"
#include "linearnexus/log.h"

namespace fs = std::filesystem;

namespace linearnexus {

namespace {
// Cut a file after its last newline: what a failed write left of a line goes, whole lines stay.
void drop_torn_tail(const std::string& path) {
  std::string text;
  try {
    text = read_file(path, file_kind::kMetrics);
  } catch (const Error&) {
    return;  // nothing readable to cut
  }
  const size_t end = text.rfind('\n');
  std::error_code ec;
  fs::resize_file(path, end == std::string::npos ? 0 : end + 1, ec);
}
}  // namespace

void MetricsLog::open(const std::string& out_dir, int64_t start_step) {
  path_ = (fs::path(out_dir) / "metrics.jsonl").string();
  if (fs::exists(path_)) {
    std::istringstream in(read_file(path_, file_kind::kMetrics));
    std::string kept, line;
    while (std::getline(in, line)) {
      try {
        if (!line.empty() && nlohmann::json::parse(line).value("step", int64_t{0}) <= start_step) kept += line + "\n";
      } catch (const std::exception&) {  // a torn last line from a crash: drop it
      }
    }
    std::ofstream(path_, std::ios::trunc) << kept;
  }
  out_.open(path_, std::ios::app);
  if (!out_) throw Error("cannot write " + path_);
}

void MetricsLog::append(const std::string& line) {
  out_ << line;
  out_.flush();
  if (out_) return;
  out_.close();
  drop_torn_tail(path_);
  out_.clear();
  out_.open(path_, std::ios::app);
  out_ << line;
  out_.flush();
  if (!out_) {
    out_.close();
    drop_torn_tail(path_);
    throw Error("cannot append to " + path_ + " (disk full?); training stopped so that no metric is lost. " +
                "Free some space and run again with trainer.resume: auto");
  }
  log_warn("a write to " + path_ + " failed once; reopened it and wrote the line again");
}

}  // namespace linearnexus
