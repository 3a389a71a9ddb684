#pragma once
// Logging for the core and for plugins. Only core/src/log.cpp includes spdlog, so no file mixes
// LibTorch and spdlog headers (torch 2.x wheels ship an fmt that clashes with the system one).
#include <memory>
#include <string>

namespace linearnexus {
void log_debug(const std::string& msg);
void log_info(const std::string& msg);
void log_warn(const std::string& msg);
void log_error(const std::string& msg);
// "debug", "info", "warn", "error"; LINEARNEXUS_LOG_LEVEL sets it at start-up.
void set_log_level(const std::string& level);
// The log lines also appended to the file `path` (a run's train.log, so it holds what the console
// showed), starting with the last lines logged before the call; until the handle is dropped. One
// file at a time: while one is attached, another call attaches nothing.
std::shared_ptr<void> log_to_file(const std::string& path);
// `text` appended to that file as it is (what a command printed besides log lines: samples, the
// final error line); nothing when no file is attached.
void log_file_text(const std::string& text);
}  // namespace linearnexus
