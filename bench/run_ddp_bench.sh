#!/usr/bin/env bash
# On a machine with 2+ GPUs: NCCL all-reduce bandwidth, then gpt-small training (bf16, B per GPU,
# T=1024) through `linearnexus run` on 1 GPU and on N GPUs (--nproc N): tokens/s and scaling.
# Usage: bash bench/run_ddp_bench.sh BUILD_DIR OUT_DIR [N=2] [BATCH=64] [STEPS=30]
set -uo pipefail
build=$1 out=$2 n=${3:-2} batch=${4:-64} steps=${5:-30}
here=$(cd "$(dirname "$0")" && pwd)
# NVLink multicast stays off (it can take a shared host's GPUs out of service).
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/device.txt"
torchrun --standalone --nproc_per_node "$n" "$here/nccl_allreduce.py" 2>&1 | grep RESULT | tee "$out/nccl.jsonl"
cat > "$out/exp.yaml" <<YAML
name: ddp_bench
device: cuda
precision: bf16
data: {path: "builtin:arithmetic", seq_len: 1024}
model: {preset: gpt-small}
trainer: {name: sft, max_steps: $steps, batch_size: $batch, log_every: 10, eval_every: 0, eval_batches: 1, save_every: 0, out_dir: OUT}
schedule: {warmup_steps: 5}
sample: {num_samples: 0}
YAML
runs=${RUN_ROOT:-/tmp}/linearnexus_ddp_bench   # checkpoints (GBs) stay out of OUT_DIR
rm -rf "$runs"
for ranks in 1 "$n"; do
  sed "s|OUT|$runs/run$ranks|" "$out/exp.yaml" > "$out/exp$ranks.yaml"
  if [ "$ranks" = 1 ]; then "$build/bin/linearnexus" run "$out/exp$ranks.yaml" --no-sample > "$out/log$ranks.txt" 2>&1
  else "$build/bin/linearnexus" run "$out/exp$ranks.yaml" --no-sample --nproc "$ranks" > "$out/log$ranks.txt" 2>&1; fi
  echo "ranks $ranks: exit $?"; tail -3 "$out/log$ranks.txt"
  cp "$runs/run$ranks/metrics.jsonl" "$out/metrics$ranks.jsonl"
done
# tokens/s of the second logged interval (steps 11-20): after warm-up, before the final evaluation
python3 - "$out" "$n" <<'PY'
import json, sys
out, n = sys.argv[1], int(sys.argv[2])
def tps(r):
    lines = [json.loads(l) for l in open(f"{out}/metrics{r}.jsonl")]
    return next(l for l in lines if l["step"] == 20)["tokens_per_sec"]
one, many = tps(1), tps(n)
print("RESULT " + json.dumps({"kind": "ddp_scaling", "ranks": n, "tokens_per_sec_1": one, f"tokens_per_sec_{n}": many,
                              "speedup": many / one, "efficiency": many / one / n}))
PY
