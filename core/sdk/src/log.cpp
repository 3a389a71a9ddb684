// The only file that includes spdlog (see log.h for why).
#include "linearnexus/log.h"

#include <spdlog/sinks/base_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <mutex>

#include "linearnexus/error.h"

namespace linearnexus {
namespace {
// The console's lines in a file (a run's train.log), each flushed as it is written. Before a file is
// attached it keeps the last lines logged, so the file starts with what the console showed before the
// run folder existed (warnings about the experiment file, plugins).
class FileSink final : public spdlog::sinks::base_sink<std::mutex> {
 public:
  // False when a file is attached already (two runs in one process: a test's): the first keeps the log.
  bool attach(const std::string& path) {
    std::lock_guard<std::mutex> g(mutex_);
    if (file_) return false;
    // Append: a resumed run continues its log. Opened without blocking and checked to be a regular
    // file: a named pipe in its place would otherwise hang the run (as read_file.h refuses them).
    const int fd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NONBLOCK, 0644);
    if (fd < 0) throw Error("cannot write the log file " + path + ": " + std::strerror(errno));
    struct stat st {};
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
      ::close(fd);
      throw Error("the log file " + path + " is not a regular file; remove it");
    }
    ::fcntl(fd, F_SETFL, O_APPEND);  // blocking writes again
    file_ = ::fdopen(fd, "a");
    if (!file_) {
      ::close(fd);
      throw Error("cannot write the log file " + path + ": " + std::strerror(errno));
    }
    for (const auto& line : early_) write(line);
    early_.clear();
    return true;
  }
  void detach() {
    std::lock_guard<std::mutex> g(mutex_);
    if (file_) std::fclose(file_);
    file_ = nullptr;
    early_.clear();  // the next file starts with what comes after this one
  }
  void raw(const std::string& text) {
    std::lock_guard<std::mutex> g(mutex_);
    if (file_) write(text);
  }

 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    spdlog::memory_buf_t formatted;
    formatter_->format(msg, formatted);
    std::string line(formatted.data(), formatted.size());
    if (file_) return write(line);
    early_.push_back(std::move(line));
    if (early_.size() > 256) early_.pop_front();
  }
  void flush_() override {}

 private:
  // A log line that cannot be written is not worth stopping a run for (metrics.jsonl and the
  // checkpoints are what a run keeps); it is simply missing from the file.
  void write(const std::string& text) {
    std::fwrite(text.data(), 1, text.size(), file_);
    std::fflush(file_);
  }
  std::FILE* file_ = nullptr;
  std::deque<std::string> early_;
};

std::shared_ptr<FileSink> file_sink() {
  static auto sink = [] {
    auto s = std::make_shared<FileSink>();
    s->set_pattern("[%Y-%m-%d %H:%M:%S] %l %v");  // a file outlives the day: dates too
    return s;
  }();
  return sink;
}

spdlog::logger& logger() {
  static std::shared_ptr<spdlog::logger> l = [] {
    // Logs go to stderr so stdout stays clean for sampled text and `tokenize` output.
    auto lg = spdlog::stderr_color_mt("linearnexus");
    lg->set_pattern("[%H:%M:%S] %^%l%$ %v");
    lg->sinks().push_back(file_sink());
    const char* env = std::getenv("LINEARNEXUS_LOG_LEVEL");
    lg->set_level(env ? spdlog::level::from_str(env) : spdlog::level::info);
    return lg;
  }();
  return *l;
}
}  // namespace

void log_debug(const std::string& msg) { logger().debug("{}", msg); }
void log_info(const std::string& msg) { logger().info("{}", msg); }
void log_warn(const std::string& msg) { logger().warn("{}", msg); }
void log_error(const std::string& msg) { logger().error("{}", msg); }
void set_log_level(const std::string& level) { logger().set_level(spdlog::level::from_str(level)); }

std::shared_ptr<void> log_to_file(const std::string& path) {
  logger();  // the sink is on the logger from the first line on
  if (!file_sink()->attach(path)) {
    log_debug("the log already goes to another file; " + path + " stays empty");
    return nullptr;
  }
  return std::shared_ptr<void>(nullptr, [](void*) { file_sink()->detach(); });
}

void log_file_text(const std::string& text) { file_sink()->raw(text); }
}  // namespace linearnexus
