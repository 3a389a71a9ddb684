#!/usr/bin/env bash
# The plugin SDK end to end, as a researcher uses it (issue 8), run by CTest as `sdk_out_of_tree_plugin`:
#   1. cmake --install the main build into a fresh prefix;
#   2. configure + build examples/plugin_template against that prefix only (no build tree, no registry);
#   3. run the example's parity test (chunked == recurrent, prefill + decode == full, finite gradients);
#   4. put retention.so alone in a folder named by $LINEARNEXUS_PLUGIN_PATH and, with the installed
#      (unchanged) runner: list it, train a model whose block_pattern uses it, sample from the checkpoint;
#   5. without the folder, sampling that checkpoint fails naming the plugin and the search path;
#   6. an out-of-tree optimizer written from the docs (tests/sdk/user_optimizer: subclasses Optimizer,
#      a second lr group) builds against the prefix and trains, checkpoints and resumes;
#   7. neither plugin needs the host library (DT_NEEDED), and the SDK's include folder holds no host
#      header;
# and that docs/writing_plugins.md shows the current retention.cpp, and that find_package refuses an
# SDK of another minor version.
# With MODE deb (CTest `sdk_from_debian_packages`, issue 34) step 1 is instead: build the Debian
# packages (cpack -G DEB), check their names, versions and dependencies, and unpack both into a
# scratch root (dpkg -x); steps 2-5 and 7 then run against that root's usr/ (step 6 is install mode's).
# Usage: test_sdk.sh BUILD_DIR SOURCE_DIR [install|deb]. Works in BUILD_DIR/sdk_test[_deb] (fixed
# paths, so ccache hits).
set -euo pipefail
BUILD=$(cd "$1" && pwd)
SRC=$(cd "$2" && pwd)
MODE=${3:-install}
WORK=$BUILD/sdk_test
[ "$MODE" = deb ] && WORK=$BUILD/sdk_test_deb
PREFIX=$WORK/prefix
[ "$MODE" = deb ] && PREFIX=$WORK/root/usr
export CCACHE_BASEDIR=$WORK LINEARNEXUS_NUM_THREADS=${LINEARNEXUS_NUM_THREADS:-1}
T0=$SECONDS
step() { echo "== [$((SECONDS - T0)) s] $*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }

# docs/writing_plugins.md shows the template's block in full: it must be the file, not an old copy.
sed -n '/^```cpp retention.cpp$/,/^```$/p' "$SRC/docs/writing_plugins.md" | sed '1d;$d' |
  diff - "$SRC/examples/plugin_template/retention.cpp" >/dev/null ||
  fail "docs/writing_plugins.md's copy of examples/plugin_template/retention.cpp is out of date"

rm -rf "$PREFIX" "$WORK/example" "$WORK/plugins" "$WORK/run" "$WORK/optimizer" "$WORK/sgd_run" "$WORK/old_sdk"
mkdir -p "$WORK"

VERSION=$(sed -n 's/^project(LinearNexus VERSION \([0-9.]*\).*/\1/p' "$SRC/CMakeLists.txt")
if [ "$MODE" = deb ]; then
  rm -rf "$WORK/debs" "$WORK/root"
  step "cpack -G DEB"
  (cd "$BUILD" && cpack -G DEB -B "$WORK/debs" >"$WORK/cpack.log" 2>&1) || { cat "$WORK/cpack.log"; fail "cpack failed"; }
  RUNTIME_DEB=$WORK/debs/linearnexus_${VERSION}_amd64.deb
  SDK_DEB=$WORK/debs/linearnexus-dev_${VERSION}_amd64.deb
  [ -f "$RUNTIME_DEB" ] && [ -f "$SDK_DEB" ] || { ls "$WORK/debs"; fail "expected $RUNTIME_DEB and $SDK_DEB"; }
  dpkg-deb -f "$RUNTIME_DEB" Depends | grep -q libtorch || fail "linearnexus does not depend on LibTorch: $(dpkg-deb -f "$RUNTIME_DEB" Depends)"
  dpkg-deb -f "$SDK_DEB" Depends | grep -q "linearnexus (= $VERSION)" || fail "linearnexus-dev does not depend on linearnexus $VERSION"
  # Listings into files first: grep -q closing the pipe early would kill dpkg-deb (pipefail).
  dpkg-deb -c "$RUNTIME_DEB" >"$WORK/runtime.list"
  dpkg-deb -c "$SDK_DEB" >"$WORK/sdk.list"
  ! grep -q "usr/include/" "$WORK/runtime.list" || fail "the runtime package carries headers"
  grep -q "usr/include/linearnexus/plugin.h" "$WORK/sdk.list" || fail "the SDK package lacks plugin.h"
  step "dpkg -x both into $WORK/root"
  for deb in "$RUNTIME_DEB" "$SDK_DEB"; do dpkg -x "$deb" "$WORK/root"; done
else
  step "install into $PREFIX"
  cmake --install "$BUILD" --prefix "$PREFIX" >"$WORK/install.log"
fi
for f in bin/linearnexus lib/liblinearnexus_sdk.so lib/liblinearnexus_host.so include/linearnexus/plugin.h \
         include/linearnexus/trainer.h include/linearnexus-host/linearnexus/host/plugin_host.h \
         share/linearnexus/presets/gpt-small.yaml lib/linearnexus/plugins/attention.so \
         lib/cmake/LinearNexus/LinearNexusConfig.cmake; do
  [ -e "$PREFIX/$f" ] || fail "cmake --install did not install $f"
done
[ ! -e "$PREFIX/include/linearnexus/host" ] || fail "host headers were installed among the SDK's (include/linearnexus/host)"
[ ! -e "$PREFIX/lib/liblinearnexus_core.so" ] || fail "a stale liblinearnexus_core.so was installed"
! grep -q linearnexus_pch "$PREFIX"/lib/cmake/LinearNexus/LinearNexusTargets*.cmake || fail "the installed package refers to the PCH target"
[ ! -e "$PREFIX/lib/linearnexus/plugins/throws.so" ] || fail "a test plugin was installed"

"$PREFIX/bin/linearnexus" --version | grep -q "^linearnexus $VERSION (plugin ABI [0-9]*, LibTorch " ||
  fail "--version says: $("$PREFIX/bin/linearnexus" --version)"
grep -q "LINEARNEXUS_VERSION \"$VERSION\"" "$PREFIX/include/linearnexus/version.h" || fail "version.h does not say $VERSION"

if [ "$MODE" = install ]; then
  step "find_package refuses an SDK of another minor version"
  mkdir -p "$WORK/old_sdk"
  printf 'cmake_minimum_required(VERSION 3.18)\nproject(old LANGUAGES CXX)\nfind_package(LinearNexus 0.1 REQUIRED)\n' >"$WORK/old_sdk/CMakeLists.txt"
  if cmake -S "$WORK/old_sdk" -B "$WORK/old_sdk/build" -DCMAKE_PREFIX_PATH="$PREFIX" -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF \
       >"$WORK/old_sdk.log" 2>&1; then
    fail "find_package(LinearNexus 0.1) accepted SDK $VERSION"
  fi
  grep -q "version: $VERSION" "$WORK/old_sdk.log" || { cat "$WORK/old_sdk.log"; fail "unclear refusal of an SDK of another version"; }
fi

step "configure examples/plugin_template against the prefix only"
cmake -S "$SRC/examples/plugin_template" -B "$WORK/example" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$PREFIX" -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF \
  -DCMAKE_FIND_USE_SYSTEM_PACKAGE_REGISTRY=OFF >"$WORK/configure.log"
grep -q "^LinearNexus_DIR:PATH=$PREFIX/lib/cmake/LinearNexus$" "$WORK/example/CMakeCache.txt" ||
  fail "the example did not find LinearNexus in $PREFIX: $(grep LinearNexus_DIR "$WORK/example/CMakeCache.txt")"

step "build the retention plugin and its parity test"
cmake --build "$WORK/example" -j2 >"$WORK/build.log" || { cat "$WORK/build.log"; fail "the example did not build"; }

step "parity test"
"$WORK/example/test_retention" "$WORK/example/retention.so"
readelf -d "$WORK/example/retention.so" | grep NEEDED | grep -q linearnexus_sdk || fail "retention.so does not link the SDK"
! readelf -d "$WORK/example/retention.so" | grep NEEDED | grep -q linearnexus_host || fail "retention.so links the host library"

mkdir -p "$WORK/plugins"
cp "$WORK/example/retention.so" "$WORK/plugins/"
RUNNER=$PREFIX/bin/linearnexus
export LINEARNEXUS_PLUGIN_PATH=$WORK/plugins

step "linearnexus plugins (installed runner)"
"$RUNNER" plugins >"$WORK/plugins.txt"
grep -q "^retention 0.1.0  $WORK/plugins/retention.so$" "$WORK/plugins.txt" || { cat "$WORK/plugins.txt"; fail "retention not listed"; }
grep -q "^attention 1.0.0  $PREFIX/lib/linearnexus/plugins/attention.so$" "$WORK/plugins.txt" ||
  { cat "$WORK/plugins.txt"; fail "the installed runner did not load its installed plugins"; }
! grep -q "NOT LOADED" "$WORK/plugins.txt" || { cat "$WORK/plugins.txt"; fail "a plugin failed to load"; }

step "train a [retention, retention, attention] model"
"$RUNNER" run "$SRC/examples/plugin_template/retention.yaml" --no-sample --set trainer.out_dir="$WORK/run" \
  --set trainer.max_steps=30 --set trainer.batch_size=8 --set trainer.log_every=10 --set trainer.eval_every=30 \
  --set trainer.eval_batches=1 --set trainer.save_every=30 2>&1 | tail -n 4
[ -e "$WORK/run/latest.safetensors" ] || fail "training saved no checkpoint"

step "sample from the checkpoint"
"$RUNNER" sample --checkpoint "$WORK/run" --prompt "12+" --max-tokens 16 --seed 1 >"$WORK/sample.txt"
cat "$WORK/sample.txt"
grep -q "^12+" "$WORK/sample.txt" || fail "no sample"

step "without the plugin folder: a clear error"
unset LINEARNEXUS_PLUGIN_PATH
if "$RUNNER" sample --checkpoint "$WORK/run" --max-tokens 4 >/dev/null 2>"$WORK/missing.txt"; then
  fail "sampling without retention.so succeeded"
fi
grep -q "needs block 'retention' from plugin 'retention' 0.1.0, which is not on the plugin path ($PREFIX/lib/linearnexus/plugins)" \
  "$WORK/missing.txt" || { cat "$WORK/missing.txt"; fail "unclear error for a missing plugin"; }

if [ "$MODE" = deb ]; then step "SDK test from the Debian packages passed"; exit 0; fi

step "an out-of-tree optimizer (tests/sdk/user_optimizer) against the prefix"
cmake -S "$SRC/tests/sdk/user_optimizer" -B "$WORK/optimizer" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$PREFIX" -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF \
  -DCMAKE_FIND_USE_SYSTEM_PACKAGE_REGISTRY=OFF >"$WORK/optimizer.configure.log"
cmake --build "$WORK/optimizer" -j2 >"$WORK/optimizer.build.log" || { cat "$WORK/optimizer.build.log"; fail "the optimizer did not build"; }
! readelf -d "$WORK/optimizer/momentum_sgd.so" | grep NEEDED | grep -q linearnexus_host || fail "momentum_sgd.so links the host library"
export LINEARNEXUS_PLUGIN_PATH=$WORK/optimizer
sgd=(--no-sample --set optimizer.name=momentum_sgd --set optimizer.lr=0.02 --set optimizer.no_decay_lr_scale=0.5
     --set trainer.out_dir="$WORK/sgd_run" --set trainer.batch_size=8 --set trainer.log_every=10 --set trainer.eval_every=40
     --set trainer.eval_batches=1 --set trainer.save_every=20 --set trainer.max_steps=40)
"$RUNNER" run "$SRC/configs/quickstart.yaml" "${sgd[@]}" --set trainer.stop_after=20 2>&1 | tail -n 2
"$RUNNER" run "$SRC/configs/quickstart.yaml" "${sgd[@]}" --set trainer.resume=auto 2>&1 | tail -n 2
grep -q '"step":40' "$WORK/sgd_run/metrics.jsonl" || fail "the momentum_sgd run did not reach step 40"
python3 - "$WORK/sgd_run/metrics.jsonl" <<'PY' || fail "momentum_sgd did not lower the loss"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
losses = [r["loss"] for r in rows if "loss" in r]
print("momentum_sgd losses:", ", ".join("%.3f" % l for l in losses))
sys.exit(0 if losses[-1] < losses[0] else 1)
PY
unset LINEARNEXUS_PLUGIN_PATH

step "SDK test passed"
