// The only file that includes spdlog (see log.h for why).
#include "linearnexus/log.h"

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <cstdlib>

namespace linearnexus {
namespace {
spdlog::logger& logger() {
  static std::shared_ptr<spdlog::logger> l = [] {
    // Logs go to stderr so stdout stays clean for sampled text and `tokenize` output.
    auto lg = spdlog::stderr_color_mt("linearnexus");
    lg->set_pattern("[%H:%M:%S] %^%l%$ %v");
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
}  // namespace linearnexus
