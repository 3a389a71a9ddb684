#pragma once
// Small helpers shared by the test programs.
#include <ftw.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

#include "catch.h"

#include <map>

#include "linearnexus/host/config.h"
#include "linearnexus/host/generator.h"
#include "linearnexus/host/params_yaml.h"
#include "linearnexus/host/plugin_host.h"
#include "linearnexus/host/runtime.h"
#include "linearnexus/host/session.h"
#include "linearnexus/host/tokenizers.h"
#include "linearnexus/model.h"
#include "linearnexus/registry.h"
#include "test_paths.h"

namespace lntest {

namespace fs = std::filesystem;

// `rel` under the shared data folder ($LINEARNEXUS_SHARED_DATA overrides), or "" when absent.
inline std::string shared_data(const std::string& rel) {
  const char* env = std::getenv("LINEARNEXUS_SHARED_DATA");
  fs::path p = fs::path(env ? env : LINEARNEXUS_SHARED_DATA_DIR) / rel;
  return fs::exists(p) ? p.string() : "";
}

// `path` and everything in it. Not std::filesystem::remove_all: torch 2.x's libtorch.so exports a
// copy of it that the dynamic linker binds first, and that copy crashes (seen on the GPU machine).
inline void remove_tree(const fs::path& path) {
  ::nftw(
      path.c_str(), [](const char* p, const struct stat*, int, struct FTW*) { return ::remove(p); }, 16,
      FTW_DEPTH | FTW_PHYS);
}

// A fresh folder, removed with everything in it when the test ends.
struct TempDir {
  fs::path path;
  explicit TempDir(const std::string& prefix = "linearnexus_test_") {
    std::string tmpl = (fs::temp_directory_path() / (prefix + "XXXXXX")).string();
    path = ::mkdtemp(tmpl.data());
  }
  ~TempDir() { remove_tree(path); }
  std::string operator/(const std::string& rel) const { return (path / rel).string(); }
};

inline void write_text(const std::string& path, const std::string& text) { std::ofstream(path) << text; }
inline std::string read_text(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

struct CliResult {
  int code;
  std::string out, err;
};
// Run the real `linearnexus` binary with `args` (a shell-quoted string), capturing its output.
inline CliResult run_cli(const std::string& args, const std::string& env = "") {
  TempDir t;
  const std::string cmd = env + " " LINEARNEXUS_RUNNER " " + args + " >" + (t / "out") + " 2>" + (t / "err");
  int rc = std::system(cmd.c_str());
  return {WIFEXITED(rc) ? WEXITSTATUS(rc) : 128 + WTERMSIG(rc), read_text(t / "out"), read_text(t / "err")};
}

// A CLI failure as users must see it: non-zero exit (no signal), one `error:` line, the last one,
// containing `expect`, and no raw exception dump.
inline void check_one_clean_error(const CliResult& r, const std::string& expect) {
  INFO("stderr: " << r.err);
  CHECK(r.code == 1);  // the one exit code of every error (never a crash by signal)
  CHECK_CONTAINS(r.err, "error: ");
  CHECK_CONTAINS(r.err, expect);
  CHECK(r.err.find("terminate called") == std::string::npos);
  CHECK(r.err.find("Exception raised from") == std::string::npos);
  // The error is one line, the last one (progress logs may precede it).
  const auto last = r.err.rfind("error: ");
  CHECK((last == 0 || (last != std::string::npos && r.err[last - 1] == '\n')));
  CHECK(r.err.find('\n', last) == r.err.size() - 1);
  CHECK(r.err.find("error: ") == last);
}

// Parse experiment YAML text as if it were the file "test.yaml".
inline linearnexus::Experiment parse(const std::string& yaml, linearnexus::PluginHost& host,
                                     const std::vector<std::string>& overrides = {}) {
  return linearnexus::parse_experiment(yaml, "test.yaml", "", overrides, host);
}

// Optimizer `name` over `params` with its defaults and `overrides` ("optimizer.lr=0.1"...).
inline std::shared_ptr<linearnexus::Optimizer> make_optimizer(linearnexus::PluginHost& host, const std::string& name,
                                                              const std::vector<linearnexus::NamedParameter>& params,
                                                              const std::vector<std::string>& overrides = {}) {
  std::vector<std::string> all = {"optimizer.name=" + name};
  all.insert(all.end(), overrides.begin(), overrides.end());
  linearnexus::Experiment e = parse("data: {path: x}\n", host, all);
  return host.registry().make_optimizer(name, params, e.optimizer);
}

// Train in-process exactly as `linearnexus run` does (minus the samples).
inline void train_experiment(const std::string& yaml, const std::vector<std::string>& overrides) {
  linearnexus::PluginHost host;
  linearnexus::Experiment e = parse(yaml, host, overrides);
  auto run = linearnexus::prepare_run(e, host);
  host.registry().make_trainer(e.trainer_name, e.trainer_params)->run(*run);
}

// The plugins of the build (one host per test process), for helpers that need a registry.
inline linearnexus::PluginHost& build_plugins() {
  static linearnexus::PluginHost host;
  return host;
}

// Generation as `sample` and the RL trainers do it: a DecodeGenerator of `m` (made for the call).
inline linearnexus::GeneratedBatch generate_batch(const linearnexus::LMModel& m,
                                                  const std::vector<std::vector<int64_t>>& prompts,
                                                  const linearnexus::SamplingParams& params, int64_t group = 1,
                                                  const linearnexus::TokenCallback& on_token = nullptr,
                                                  const linearnexus::DecodeOptions& options = {}) {
  linearnexus::DecodeGenerator generator(m, build_plugins().registry(), options);
  return generator.generate(prompts, params, group, on_token);
}
inline std::vector<int64_t> generate(const linearnexus::LMModel& m, const std::vector<int64_t>& prompt,
                                     const linearnexus::SamplingParams& params) {
  return generate_batch(m, {prompt}, params).completions.front();
}

// A block of plugin kind `name`, width C (2 layers, vocabulary 17, up to 8192 tokens), its schema's
// defaults overridden by `kv` (YAML text values): what block tests build their blocks with.
inline std::shared_ptr<linearnexus::Block> make_test_block(linearnexus::PluginHost& host, const std::string& name,
                                                           int64_t C, const std::map<std::string, std::string>& kv) {
  using namespace linearnexus;
  const auto& reg = host.registry().get(PluginKind::Block, name);
  Params p = params_from_defaults(reg.schema, "model.blocks." + name);
  for (const auto& [k, v] : kv) {
    auto spec = std::find_if(reg.schema.begin(), reg.schema.end(), [&](const ParamSpec& s) { return s.key == k; });
    REQUIRE(spec != reg.schema.end());
    p.set(k, parse_param_value(*spec, v, "test"));
  }
  ModelDims d;
  d.hidden_size = C;
  d.n_layer = 2;
  d.vocab_size = 17;
  d.max_seq_len = 8192;
  return host.registry().make_block(name, d, p, 0);
}

// A run folder's metrics.jsonl -> {step: {key: value}}
inline std::map<int64_t, nlohmann::json> read_metrics(const std::string& run_dir) {
  std::map<int64_t, nlohmann::json> out;
  std::ifstream in(run_dir + "/metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    auto j = nlohmann::json::parse(line);
    out[j["step"].get<int64_t>()] = j;
  }
  return out;
}

// The message of the linearnexus::Error that `f` throws ("" when it throws none).
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

}  // namespace lntest
