#pragma once
// The YAML experiment target of fuzz_inputs (its own file: it needs the core's LibTorch headers).
#include <string>
#include <vector>

std::vector<std::string> fuzz_yaml_seeds();
// parse_experiment on `yaml` (plugins.paths ignored, as for a checkpoint's config); an accepted
// experiment must re-parse from its resolved YAML to the same text.
void fuzz_yaml_run(const std::string& yaml);
