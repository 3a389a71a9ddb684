#!/usr/bin/env bash
# Runs skinny_gemm.cu's kernel (the decode step's skinny matmul, with and without its norm prologue)
# on the CPU against a float64 reference, without a GPU: one OS thread per CUDA thread and a
# cluster's CTAs at once (scripts/cuda_emu/shim.h), skinny_gemm_hw.cuh's loads / mma / cluster
# primitives replaced by emu/skinny_gemm_hw_emu.h (mma_emu.h's PTX fragment layouts, bf16 rounded to
# nearest even). The launcher's own configuration code (config_for, config_valid, make_params, the
# shared-memory size) runs as it is; only the CUDA launch is the emulator's. Checks indexing, masking,
# the K split over warps and a cluster's CTAs, the epilogues and the prologue's arithmetic; not speed,
# nor what the emulator cannot see (rsqrtf's and tanhf's approximations, register limits, timing).
# Usage: bash core/sdk/src/cuda/emu/run.sh [quick | norm | head]   (g++ with C++17 and pthreads; ~1-3 min on 2 cores)
# EMU_FLAGS="-fsanitize=address,undefined" finds out-of-bounds accesses; -fsanitize=thread races.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../../../.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 - "$here/.." "$work" <<'PY'
import sys
src, out = sys.argv[1], sys.argv[2]
s = open(src + '/skinny_gemm.cu').read()
s = s[:s.index('// ---- launchers')]  # the kernel and the launcher's device-free helpers
for a, b in [('#include <cuda_bf16.h>', '#include "shim.h"'),
             ('#include "skinny_gemm_hw.cuh"', '#include "skinny_gemm_hw_emu.h"'),
             ('extern __shared__ float smem[];', 'float* smem = reinterpret_cast<float*>(g_smem);')]:
    assert a in s, a
    s = s.replace(a, b)
s += '\n}  // namespace\n}  // namespace cuda\n}  // namespace linearnexus\n'
open(out + '/skinny_gemm_emu.cpp', 'w').write(s)
h = open(src + '/kernels.h').read().replace('#include <cuda_runtime_api.h>', '#include "shim.h"')
open(out + '/kernels.h', 'w').write(h)
PY
cp "$root/scripts/cuda_emu/shim.h" "$root/scripts/cuda_emu/mma_emu.h" "$here/skinny_gemm_hw_emu.h" \
  "$here/emulate_skinny_gemm.cpp" "$work/"
${CXX:-g++} -std=c++17 -O2 -fno-strict-aliasing -pthread ${EMU_FLAGS:-} -I"$work" "$work/emulate_skinny_gemm.cpp" \
  -o "$work/emu"
"$work/emu" "$@"
