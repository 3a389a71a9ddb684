#!/usr/bin/env bash
# Every C++ and CUDA source tracked by git is formatted as .clang-format says (CTest format_check,
# issue 34). Fix a file with `clang-format -i FILE`. Prints SKIPPED and passes where clang-format or
# git (a tree that is not a checkout) is missing.
# Usage: format_check.sh SOURCE_DIR
set -euo pipefail
cd "$1"
CLANG_FORMAT=$(command -v clang-format || command -v clang-format-14 || true)
if [ -z "$CLANG_FORMAT" ]; then echo "SKIPPED: clang-format is not installed (apt-get install clang-format)"; exit 0; fi
if ! git rev-parse --is-inside-work-tree >/dev/null 2>&1; then echo "SKIPPED: not a git checkout"; exit 0; fi
mapfile -t files < <(git ls-files -- '*.cpp' '*.h' '*.cu' '*.cuh' '*.h.in')
bad=()
for f in "${files[@]}"; do
  [ -f "$f" ] || continue
  "$CLANG_FORMAT" --style=file --dry-run --Werror "$f" >/dev/null 2>&1 || bad+=("$f")
done
if [ ${#bad[@]} -gt 0 ]; then
  echo "not formatted as .clang-format says (clang-format -i FILE fixes each):"
  printf '  %s\n' "${bad[@]}"
  exit 1
fi
echo "${#files[@]} files formatted"
