// Suggestions for mistyped commands (command_hints.h).
#include "command_hints.h"

#include <map>
#include <vector>

#include "linearnexus/params.h"

namespace linearnexus {

std::string unknown_command(const CLI::App& app, int argc, const char* const* argv) {
  // Words other programs use for a command this one names otherwise (top level only).
  static const std::map<std::string, std::string> kSynonyms = {
      {"train", "run"}, {"generate", "sample"}, {"check", "validate"}};
  const CLI::App* at = &app;
  std::string path = "";
  for (int i = 1; i < argc; ++i) {
    const std::string word = argv[i];
    if (word.empty() || word[0] == '-') return "";  // options: CLI11's own messages say what is wrong
    const auto subs = at->get_subcommands([](const CLI::App*) { return true; });
    if (subs.empty()) return "";  // a command's own arguments
    std::vector<std::string> names;
    for (const auto* s : subs) {
      if (s->get_name() == word) {
        at = s;
        path += word + " ";
        names.clear();
        break;
      }
      names.push_back(s->get_name());
    }
    if (names.empty()) continue;  // found: look at the next word
    if (at == &app)
      for (const auto& [synonym, command] : kSynonyms) names.push_back(synonym);
    std::string near = nearest_key(word, names);
    if (at == &app && kSynonyms.count(near)) near = kSynonyms.at(near);
    std::string list;
    for (const auto* s : subs) list += (list.empty() ? "" : ", ") + s->get_name();
    return "unknown command '" + path + word + "'" + (near.empty() ? "" : "; did you mean '" + path + near + "'?") +
           " (commands" + (path.empty() ? "" : " of '" + path.substr(0, path.size() - 1) + "'") + ": " + list + ")";
  }
  return "";
}

}  // namespace linearnexus
