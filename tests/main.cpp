// The test programs' main: Catch2 with LibTorch using every core, as the runner does.
#if !__has_include(<catch2/catch_all.hpp>)
#define CATCH_CONFIG_RUNNER
#endif
#include "catch.h"
#include "linearnexus/host/runtime.h"
#include "linearnexus/host/session.h"

int main(int argc, char** argv) {
  linearnexus::init_runtime();
  return Catch::Session().run(argc, argv);
}
