#pragma once
// Logging for the core and for plugins. Only core/src/log.cpp includes spdlog, so no file mixes
// LibTorch and spdlog headers (torch 2.x wheels ship an fmt that clashes with the system one).
#include <string>

namespace linearnexus {
void log_debug(const std::string& msg);
void log_info(const std::string& msg);
void log_warn(const std::string& msg);
void log_error(const std::string& msg);
// "debug", "info", "warn", "error"; LINEARNEXUS_LOG_LEVEL sets it at start-up.
void set_log_level(const std::string& level);
}  // namespace linearnexus
