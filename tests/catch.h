#pragma once
// One include for Catch2 v2 (Debian: <catch2/catch.hpp>) and v3 (<catch2/catch_all.hpp>).
#if __has_include(<catch2/catch_all.hpp>)
#include <catch2/catch_all.hpp>
#define LN_CATCH3 1
using Catch::Approx;
// A test that cannot run here says why and is reported as skipped.
#define LN_SKIP(msg) SKIP(msg)
#define CHECK_CONTAINS(text, part) CHECK_THAT(text, Catch::Matchers::ContainsSubstring(part))
#else
#include <catch2/catch.hpp>
#define CHECK_CONTAINS(text, part) CHECK_THAT(text, Catch::Matchers::Contains(part))
// Catch2 v2 has no SKIP: warn (printed with the test's name) and leave the test.
#define LN_SKIP(msg)          \
  do {                        \
    WARN("SKIPPED: " << msg); \
    return;                   \
  } while (0)
#endif
