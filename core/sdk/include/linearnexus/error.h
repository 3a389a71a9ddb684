#pragma once
// The one exception type LinearNexus throws for a user-facing problem. Its message is a complete,
// single-line sentence naming the file/key at fault and what to do; the runner prints it as is.
#include <stdexcept>
#include <string>

namespace linearnexus {
struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Any exception's message as one line: a LibTorch (c10::Error) message without its backtrace, any
// other message up to its first line break. Used wherever a foreign error is wrapped or printed.
std::string error_text(const std::exception& e);
}  // namespace linearnexus
