// One-line messages from any exception (see error.h).
#include "linearnexus/error.h"

#include <c10/util/Exception.h>

namespace linearnexus {

std::string error_text(const std::exception& e) {
  // LibTorch's what() carries a C++ backtrace after the message; users get the message alone.
  const auto* c10 = dynamic_cast<const c10::Error*>(&e);
  std::string msg = c10 ? c10->what_without_backtrace() : e.what();
  return msg.substr(0, msg.find('\n'));
}

}  // namespace linearnexus
