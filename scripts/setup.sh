#!/usr/bin/env bash
# Installs every dependency LinearNexus needs on Debian 12 and builds it.
# Usage: scripts/setup.sh [build-dir]   (default: build)
# Safe to re-run: apt skips what is installed, the build is incremental (ccache).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${1:-build}

PACKAGES=(
  build-essential cmake ninja-build ccache pkg-config
  libtorch-dev            # LibTorch 1.13 (CPU)
  libopenblas0-openmp     # ~8x faster matmuls than the reference BLAS libtorch pulls in
  libboost-dev            # Boost.DLL (header-only; we use it on std::filesystem)
  libyaml-cpp-dev libcli11-dev libspdlog-dev catch2
  nlohmann-json3-dev      # safetensors headers, metrics.jsonl, tokenizer files
  libpcre2-dev            # GPT-2 / Llama-3 / Qwen2 pre-tokenizer regexes with Unicode classes
  libsentencepiece-dev    # SentencePiece tokenizer.model files (Llama-2, TinyLlama); optional in CMake
  libicu-dev              # NFC normalization for Qwen2's tokenizer.json; optional in CMake
  libcurl4-openssl-dev    # data.download
  libssl-dev              # SHA-256 of downloads and prepared data (libcrypto)
  libcpp-httplib-dev      # `linearnexus serve`: the HTTP server (optional in CMake)
  libgloo-dev             # Gloo headers: c10d's ProcessGroupGloo (data-parallel training on the CPU)
  python3-jinja2          # test_jinja's oracle: chat templates rendered as transformers renders them
  clang-format            # format_check: the sources as .clang-format says
  dpkg-dev                # sdk_from_debian_packages: dpkg-shlibdeps for cpack's package dependencies
  python3-protobuf        # test_observability's reader of the TensorBoard event files (trainer.trackers)
  gnuplot-nox             # scripts/plot_metrics.sh
)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

export CCACHE_DIR=${CCACHE_DIR:-$HOME/.cache/ccache}
export CCACHE_BASEDIR=$PWD
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build "$BUILD_DIR" -j "$(nproc)"
echo "setup: built into $BUILD_DIR (run: $BUILD_DIR/bin/linearnexus --help)"
