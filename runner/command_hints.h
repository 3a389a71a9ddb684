#pragma once
// A command line whose command is not one of the program's: "unknown command 'trian'; did you mean
// 'run'?" instead of CLI11's "arguments were not expected".
#include <CLI/CLI.hpp>

#include <string>

namespace linearnexus {

// The error for the first word of argv that should name a (sub)command of `app` and names none, with
// the nearest by edit distance among the commands there and the words people type for them (train ->
// run, generate -> sample); "" when every command word is one.
std::string unknown_command(const CLI::App& app, int argc, const char* const* argv);

}  // namespace linearnexus
