#!/usr/bin/env bash
# On the GPU machine: our benchmark (bench_gpu) and the plain-PyTorch reference (reference.py) on the
# same shapes, precision and optimizer, then one table (docs/benchmarks.md holds the last one).
# Usage: bash bench/run_gpu_bench.sh BUILD_DIR OUT_DIR [bench_gpu args...]
set -uo pipefail
build=$1 out=$2
shift 2
here=$(cd "$(dirname "$0")" && pwd)
export PYTHONUNBUFFERED=1
{
  date -u +"date: %Y-%m-%d %H:%M UTC"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c 'import torch, triton; print("torch", torch.__version__, "CUDA", torch.version.cuda, "cuDNN", torch.backends.cudnn.version(), "triton", triton.__version__)'
} | tee "$out/device.txt"
"$build/bin/bench_gpu" "$@" | tee "$out/cpp.jsonl"
# The reference trains on the batches ours found to fit.
batch_of() {
  python3 -c "import json
for l in open('$out/cpp.jsonl'):
    r = json.loads(l[7:]) if l.startswith('RESULT ') else {}
    if r.get('kind') == 'train' and r.get('model') == '$1': print(r['batch'])" | head -1
}
python3 "$here/reference.py" --batch "$(batch_of gpt-small)" --mamba-batch "$(batch_of mamba-small)" | tee "$out/py.jsonl"
python3 "$here/reference.py" --table "$out/cpp.jsonl" "$out/py.jsonl" | tee "$out/table.md"
