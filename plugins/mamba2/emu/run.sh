#!/usr/bin/env bash
# Runs ssd_chunk.cu's kernels on the CPU against a float64 reference, without a GPU: one OS thread per
# CUDA thread (shim.h), and mma.cuh's tensor-core / ldmatrix / cp.async helpers replaced by
# mma_emu.h's, which follow the PTX ISA's fragment layouts with bf16 rounded to nearest even. Checks
# the kernels' indexing, fragment use, masking and the chunk decomposition; not their speed, nor what
# the emulator cannot see (ex2.approx's error, the hardware's accumulation order, races the emulator's
# barriers hide). Usage: bash plugins/mamba2/emu/run.sh [case]   (g++ with C++17 and pthreads)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
python3 - "$here/.." "$work" <<'PY'
import sys
src, out = sys.argv[1], sys.argv[2]
s = open(src + '/ssd_chunk.cu').read()
s = s[:s.index('// ---- launchers')]  # the kernels, not their launchers
s = s.replace('#include <cuda_bf16.h>', '#include "shim.h"').replace('#include "mma.cuh"', '#include "mma_emu.h"')
decl = 'extern __shared__ __align__(16) unsigned char smem[];'
assert s.count(decl) == 2
s = s.replace(decl, 'unsigned char* smem = g_smem;')
s += '\n}  // namespace\n}  // namespace cuda\n}  // namespace mamba2\n}  // namespace linearnexus\n'
open(out + '/kernel_emu.cpp', 'w').write(s)
h = open(src + '/ssd_chunk_cuda.h').read().replace('#include <cuda_runtime_api.h>', '#include "shim.h"')
open(out + '/ssd_chunk_cuda.h', 'w').write(h)
PY
cp "$here/shim.h" "$here/mma_emu.h" "$here/emulate_ssd.cpp" "$work/"
g++ -std=c++17 -O2 -pthread ${EMU_FLAGS:-} -I"$work" "$work/emulate_ssd.cpp" -o "$work/emu"
"$work/emu" "$@"
