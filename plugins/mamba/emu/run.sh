#!/usr/bin/env bash
# Runs selective_scan_bwd.cu's kernel on the CPU against a float64 reference, without a GPU: one OS
# thread per CUDA thread, barriers for __syncthreads and warp shuffles (shim.h), fp32 only. Checks the
# kernel's indexing and its scan decomposition (partial chunks, partial passes, no gate, no dsT,
# K = 2 and 4); not its speed, bf16, or anything the hardware adds (ex2.approx, atomics' order).
# Usage: bash plugins/mamba/emu/run.sh   (g++ with C++17 and pthreads; ~1 min to build, ~5 s to run)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
python3 - "$here/.." "$work" <<'PY'
import sys
src, out = sys.argv[1], sys.argv[2]
s = open(src + '/selective_scan_bwd.cu').read()
s = s[:s.index('constexpr int64_t smem_floats')]  # the kernel, not its launcher
s = s.replace('#include <cuda_bf16.h>', '#include "shim.h"')
s = s.replace('extern __shared__ __align__(16) float smem[];', 'float* smem = g_smem;')
s = s.replace('namespace {\n\nconstexpr int kSteps', 'namespace emu {\n\nconstexpr int kSteps')
s += '\n}  // namespace\n}  // namespace cuda\n}  // namespace mamba\n}  // namespace linearnexus\n'
open(out + '/kernel_emu.cpp', 'w').write(s)
asm = 'asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));'
m = open(src + '/scan_math.cuh').read().replace('#include <cuda_bf16.h>', '#include "shim.h"').replace(asm, 'y = std::exp2(x);')
open(out + '/scan_math.cuh', 'w').write(m)
h = open(src + '/selective_scan_cuda.h').read().replace('#include <cuda_runtime_api.h>', '#include "shim.h"')
open(out + '/selective_scan_cuda.h', 'w').write(h)
PY
cp "$here/shim.h" "$here/emulate_scan_bwd.cpp" "$work/"
g++ -std=c++17 -O1 -pthread -I"$work" "$work/emulate_scan_bwd.cpp" -o "$work/emu"
"$work/emu"
