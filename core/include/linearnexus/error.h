#pragma once
// The one exception type LinearNexus throws for a user-facing problem. Its message is a complete,
// single-line sentence naming the file/key at fault and what to do; the runner prints it as is.
#include <stdexcept>

namespace linearnexus {
struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};
}  // namespace linearnexus
