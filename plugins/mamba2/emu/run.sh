#!/usr/bin/env bash
# Runs ssd_chunk.cu's and ssd_chunk_bwd.cu's kernels on the CPU against a float64 reference, without
# a GPU: one OS thread per CUDA thread (scripts/cuda_emu/shim.h), and linearnexus/cuda/mma.cuh's tensor-core / ldmatrix / cp.async
# helpers replaced by scripts/cuda_emu/mma_emu.h's, which follow the PTX ISA's fragment layouts with bf16 rounded to
# nearest even. Checks the kernels' indexing, fragment use, masking, the chunk decomposition and the
# gradient formulas; not their speed, nor what the emulator cannot see (ex2.approx's error, the
# hardware's accumulation order, register or shared-memory limits, timing).
# Usage: bash plugins/mamba2/emu/run.sh [case]   (g++ with C++17 and pthreads; ~2 min on 2 cores)
# EMU_FLAGS="-fsanitize=thread" finds missing barriers (a race between two CUDA threads is one between
# two OS threads here); -fsanitize=address,undefined out-of-bounds accesses.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
python3 - "$here/.." "$work" <<'PY'
import sys, os
src, out = sys.argv[1], sys.argv[2]
decl = 'extern __shared__ __align__(16) unsigned char smem[];'
def port(s):
    s = s.replace('#include <cuda_bf16.h>', '#include "shim.h"').replace('#include <linearnexus/cuda/mma.cuh>', '#include "mma_emu.h"').replace('#include <linearnexus/cuda/tiles.cuh>', '#include "tiles.cuh"')
    return s.replace(decl, 'unsigned char* smem = g_smem;')
for cu in ['ssd_chunk.cu', 'ssd_chunk_bwd.cu']:
    if not os.path.exists(src + '/' + cu): continue
    s = open(src + '/' + cu).read()
    s = s[:s.index('// ---- launchers')]  # the kernels, not their launchers
    s = port(s) + '\n}  // namespace\n}  // namespace cuda\n}  // namespace mamba2\n}  // namespace linearnexus\n'
    open(out + '/' + cu.replace('.cu', '_emu.cpp'), 'w').write(s)
open(out + '/ssd_common.cuh', 'w').write(port(open(src + '/ssd_common.cuh').read()))
h = open(src + '/ssd_chunk_cuda.h').read().replace('#include <cuda_runtime_api.h>', '#include "shim.h"')
open(out + '/ssd_chunk_cuda.h', 'w').write(h)
open(out + '/tiles.cuh', 'w').write(port(open(src + '/../../core/sdk/include/linearnexus/cuda/tiles.cuh').read()))
PY
cp "$here/../../../scripts/cuda_emu/shim.h" "$here/../../../scripts/cuda_emu/mma_emu.h" "$here/emulate_ssd.cpp" "$work/"
${CXX:-g++} -std=c++17 -O2 -pthread ${EMU_FLAGS:-} -I"$work" "$work/emulate_ssd.cpp" -o "$work/emu"
"$work/emu" "$@"
