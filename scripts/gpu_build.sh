#!/usr/bin/env bash
# Configure and build LinearNexus on the GPU machine against the CUDA LibTorch inside its Python torch.
# Usage: bash scripts/gpu_build.sh BUILD_DIR [DEBS_DIR [target...]]
#
# That machine (Ubuntu 24.04, torch 2.11 + CUDA 13, g++ 13) has Catch2 v3, spdlog on fmt 9, yaml-cpp,
# CLI11 and Boost, but no nlohmann-json, PCRE2, libcurl or OpenSSL headers and no network: their
# Debian -dev packages travel in DEBS_DIR (apt-get download nlohmann-json3-dev libpcre2-dev
# libcurl4-openssl-dev libssl-dev) and are unpacked under /tmp; their libX.so links are pointed at
# the machine's own runtime libraries. torch's bundled fmt 12 shadows the system fmt, so spdlog runs
# header-only on std::format (LINEARNEXUS_SPDLOG_STD_FORMAT, C++20). No target: everything.
set -euo pipefail
build=$1
debs=${2:-}
shift $(( $# < 2 ? $# : 2 ))
prefix=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')
extra=()
if [ -n "$debs" ] && ls "$debs"/*.deb >/dev/null 2>&1; then
  deps=/tmp/linearnexus-deps
  lib=$deps/usr/lib/x86_64-linux-gnu
  mkdir -p "$deps"
  for f in "$debs"/*.deb; do dpkg -x "$f" "$deps"; done
  for pair in pcre2-8:libpcre2-8.so.0 curl:libcurl.so.4 crypto:libcrypto.so.3 ssl:libssl.so.3; do
    name=${pair%%:*} so=${pair#*:}
    found=$(ls /usr/lib/x86_64-linux-gnu/"$so" /lib/x86_64-linux-gnu/"$so" 2>/dev/null | head -1 || true)
    [ -n "$found" ] || { echo "gpu_build: this machine has no $so (runtime of lib$name)"; exit 1; }
    ln -sf "$found" "$lib/lib$name.so"
  done
  sed -i "s|^prefix=/usr\$|prefix=$deps/usr|" "$lib"/pkgconfig/*.pc
  export PKG_CONFIG_PATH=$lib/pkgconfig
  prefix="$prefix;$deps/usr"
  inc="-isystem $deps/usr/include/x86_64-linux-gnu -isystem $deps/usr/include"
  extra+=(-DCMAKE_CXX_FLAGS="$inc" -DCURL_NO_CURL_CMAKE=ON -DCURL_INCLUDE_DIR="$deps/usr/include/x86_64-linux-gnu"
          -DCURL_LIBRARY="$lib/libcurl.so" -DCMAKE_EXE_LINKER_FLAGS="-L$lib" -DCMAKE_SHARED_LINKER_FLAGS="-L$lib"
          -DCMAKE_MODULE_LINKER_FLAGS="-L$lib")
fi
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$prefix" \
  -DLINEARNEXUS_SPDLOG_STD_FORMAT=ON "${extra[@]}" > "$build.configure.log" 2>&1 \
  || { tail -40 "$build.configure.log"; exit 1; }
grep -E "LinearNexus:|Torch|CUDA" "$build.configure.log" | head -5 || true
if [ $# -gt 0 ]; then cmake --build "$build" -j"$(nproc)" --target "$@"; else cmake --build "$build" -j"$(nproc)"; fi
