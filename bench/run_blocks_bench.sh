#!/usr/bin/env bash
# On the GPU machine, in one call: build the linear-time blocks with their gpu tests and benchmarks,
# run the tests, then bench_blocks on the GPU while the same binary measures the machine's otherwise
# idle CPU cores (pinned apart: cores 0-1 drive the GPU, the rest run the CPU bench), then bench_gpu's
# training rows (T = 1024, bf16) of gpt-small against mamba2-small, a gated_deltanet and an rwkv7 model
# of gpt-small's shape. Every step has a time limit so the call cannot overrun.
# Usage: bash bench/run_blocks_bench.sh BUILD_DIR OUT_DIR DEBS_DIR
set -uo pipefail
build=$1 out=$2 debs=$3
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
{ date -u +"date: %Y-%m-%d %H:%M UTC"; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader;
  lscpu | grep -E "Model name|^CPU\(s\)"; } > "$out/device.txt" 2>&1
command -v taskset >/dev/null || taskset() { shift 2; "$@"; }  # no pinning where taskset is missing
t0=$(date +%s)
bash scripts/gpu_build.sh "$build" "$debs" test_gpu_blocks bench_blocks bench_gpu adamw > "$out/build.log" 2>&1 \
  || { tail -40 "$out/build.log"; exit 1; }
echo "build: $(( $(date +%s) - t0 )) s" | tee -a "$out/device.txt"
last=$(( $(nproc) - 1 ))
LINEARNEXUS_NUM_THREADS=$(( last - 1 )) taskset -c 2-$last timeout 66 "$build/bin/bench_blocks" --device cpu --C 256 \
  --repeats 1 --budget-s 56 > "$out/bench_blocks_cpu.md" 2>&1 &
cpu=$!
taskset -c 0-1 timeout 20 "$build/bin/test_gpu_blocks" > "$out/gpu_tests.log" 2>&1; echo "gpu tests rc $?" >> "$out/gpu_tests.log"
taskset -c 0-1 timeout 28 "$build/bin/bench_blocks" --device cuda --C 768 --repeats 3 --budget-s 20 > "$out/bench_blocks_gpu.md" 2>&1
m='vocab_size: 50257, hidden_size: 768, n_layer: 12, max_seq_len: 1024'
taskset -c 0-1 timeout 32 "$build/bin/bench_gpu" --batches 16,8 --steps 4 --train gpt-small --train mamba2-small \
  --train "gated_deltanet-12L={$m, block_pattern: [gated_deltanet], blocks: {gated_deltanet: {n_head: 12, chunk_size: 64, mlp: gelu}}}" \
  --train "rwkv7-12L={$m, block_pattern: [rwkv7], blocks: {rwkv7: {n_head: 12, chunk_size: 32}}}" > "$out/bench_gpu.jsonl" 2>&1
wait $cpu
echo "total: $(( $(date +%s) - t0 )) s" | tee -a "$out/device.txt"
tail -5 "$out/gpu_tests.log"; grep -h "RESULT" "$out/bench_gpu.jsonl"
