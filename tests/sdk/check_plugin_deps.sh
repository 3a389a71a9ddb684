#!/usr/bin/env bash
# The SDK rule (docs/writing_plugins.md, "The SDK and the host"), checked on the build, run by CTest
# as `sdk_plugins_use_only_the_sdk`:
#   1. no plugin .so has the host library in its DT_NEEDED, and every LinearNexus symbol a plugin
#      leaves undefined is one the SDK library defines;
#   2. plugin sources (every file of plugins/ but the tests, and the template's block) include only
#      the SDK's headers: linearnexus/X.h for an X.h of core/sdk/include/linearnexus.
# Usage: check_plugin_deps.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
BUILD=$(cd "$1" && pwd)
SRC=$(cd "$2" && pwd)
fail() { echo "FAIL: $*" >&2; exit 1; }

sdk_lib=$BUILD/lib/liblinearnexus_sdk.so
[ -e "$sdk_lib" ] || fail "no $sdk_lib"
sdk_symbols=$(mktemp)
trap 'rm -f "$sdk_symbols"' EXIT
nm -D --defined-only "$sdk_lib" | awk '{print $3}' | sort -u >"$sdk_symbols"
n=0
for so in "$BUILD"/lib/linearnexus/plugins/*.so; do
  needed=$(readelf -d "$so" | awk '/NEEDED/ {print $NF}' | tr -d '[]')
  ! grep -q linearnexus_host <<<"$needed" || fail "$(basename "$so") needs liblinearnexus_host.so: $needed"
  grep -q linearnexus_sdk <<<"$needed" || fail "$(basename "$so") does not link the SDK library: $needed"
  missing=$(nm -D --undefined-only "$so" | awk '{print $2}' | grep linearnexus | sort -u | comm -23 - "$sdk_symbols" || true)
  [ -z "$missing" ] || fail "$(basename "$so") uses LinearNexus symbols the SDK does not define: $(c++filt <<<"$missing" | head -5)"
  n=$((n + 1))
done
[ "$n" -gt 5 ] || fail "only $n plugins found in $BUILD/lib/linearnexus/plugins"
echo "ok: $n plugins link the SDK library and not the host's"

bad=""
while IFS= read -r file; do
  while IFS= read -r header; do
    [ -e "$SRC/core/sdk/include/$header" ] || bad+="$file includes $header (not an SDK header)"$'\n'
  done < <(grep -ohE '#include *[<"]linearnexus/[^>"]+[>"]' "$file" | sed -E 's/#include *[<"]//; s/[>"]$//')
done < <(find "$SRC/plugins" "$SRC/examples/plugin_template" -type f \( -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' \) \
           ! -name 'test_*')
[ -z "$bad" ] || fail "plugin sources include host headers:"$'\n'"$bad"
echo "ok: plugin sources include only SDK headers"
