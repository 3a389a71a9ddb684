#pragma once
// Shared by the runner's commands.
#include <exception>

#include "linearnexus/error.h"

namespace linearnexus {

// An exception thrown by plugin code may carry the plugin's copy of its vtable (Error, or any
// header-only exception type), which is unmapped once the PluginHost that keeps the plugin loaded is
// gone; `body` runs while the host lives, and its errors are copied here (the runner's code, as one
// line: LibTorch's without their backtrace) before they travel on to main's handler.
template <class F>
int with_plugin_errors_copied(F&& body) {
  try {
    return body();
  } catch (const std::exception& e) {
    throw Error(error_text(e));
  }
}

}  // namespace linearnexus
