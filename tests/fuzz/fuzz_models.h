#pragma once
// The targets of fuzz_inputs that need LibTorch and the build's plugins (their own file, as
// fuzz_yaml.cpp): a Hugging Face config.json as `convert hf-import` reads it, and a run checkpoint's
// optimizer state as a resume reads it.
#include <string>
#include <vector>

// config.json texts (the fixtures of tests/fixtures/hf); hf_config_experiment on a mutant. An
// accepted config must give an experiment whose resolved YAML re-parses to the same text.
std::vector<std::string> fuzz_config_seeds();
void fuzz_config_run(const std::string& config_json);

// Whole checkpoint files (a tiny model trained one step with adamw, muon and sophia: model,
// optimizer state, RNG), read as a resume reads them (RunCheckpoint::read, load_optimizer). A state
// that loads must be one an optimizer could have made: finite, counts >= 0, second moments >= 0.
// `dir` holds the file each input is written to.
std::vector<std::string> fuzz_optimizer_seeds(const std::string& dir);
void fuzz_optimizer_run(const std::string& checkpoint, const std::string& dir);
