#!/usr/bin/env bash
# Runs decode_attention.cu (its kernels and its launcher, decode_attention()) on the CPU against a
# float64 reference, without a GPU: one OS thread per CUDA thread, barriers for __syncthreads and warp
# shuffles, bf16 rounded to nearest even (shim.h). Checks the kernels' indexing, chunking, GQA
# grouping, padding, the slot read on the device and the merge, in fp32 and bf16; not their speed or
# anything the hardware adds (__expf's approximation, the order of the warps).
# Usage: bash plugins/attention/emu/run.sh   (g++ with C++17 and pthreads; ~30 s to build, ~1 min to run)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 - "$here/.." "$work" <<'PY'
import re, sys
src, out = sys.argv[1], sys.argv[2]
s = open(src + '/decode_attention.cu').read()
s = s.replace('#include <cuda_bf16.h>', '#include "shim.h"')
# __shared__ float name[a][b]; -> one buffer per CTA (emu_shared)
s, n = re.subn(r'__shared__ float (\w+)((?:\[[^\]]+\])+);',
               r'float(&\1)\2 = *reinterpret_cast<float(*)\2>(emu_shared(sizeof(float\2)));', s)
assert n >= 4, n
# kernel<T, ...><<<grid, block, 0, stream>>>(args); -> emu_launch(grid, block, [&] { kernel(args); });
def launch(m):
    cfg = [c.strip() for c in m.group(2).split(',')]
    return 'emu_launch(dim3(%s), dim3(%s), [&] { %s(%s); });' % (cfg[0], cfg[1], m.group(1), m.group(3))
s, n = re.subn(r'(\w+<[^<>;]*>)\s*<<<(.*?)>>>\(([^;]*)\);', launch, s, flags=re.S)
assert n == 5, n
assert '<<<' not in s and '__shared__' not in s
open(out + '/kernel_emu.cpp', 'w').write(s)
h = open(src + '/decode_attention_cuda.h').read().replace('#include <cuda_runtime_api.h>', '#include "shim.h"')
open(out + '/decode_attention_cuda.h', 'w').write(h)
PY
cp "$here/shim.h" "$here/emulate_decode_attention.cpp" "$work/"
g++ -std=c++17 -O1 -fno-strict-aliasing -Wall -Wextra -Wno-unused-parameter -Wno-unknown-pragmas -pthread -I"$work" "$work/emulate_decode_attention.cpp" \
  -o "$work/emu"
"$work/emu"
