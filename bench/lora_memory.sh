#!/usr/bin/env bash
# LoRA against full fine-tuning (issue #31, "memory measured against full fine-tuning"), on the CPU:
# the peak resident memory of the whole `linearnexus run` process (GNU time's maximum RSS) and the
# milliseconds a step, for the same fine-tune with and without model.lora.
# Usage: bash bench/lora_memory.sh BUILD_DIR OUT_DIR [STEPS]
#
# The base: gpt-small's blocks (12 attention layers of 768, 85M parameters) with the arithmetic task's
# character vocabulary, made by one SFT step (its weights' values do not change the memory). Then STEPS
# steps of SFT from it, batch 8 x 256 tokens, AdamW, fp32: once with every weight trained, once with
# model.lora {rank: 16, alpha: 32, targets: [all-linear]} (AdamW then keeps moments for the adapters
# only, and the frozen weights get no gradients). GPU memory is not measured by this script.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: bash bench/lora_memory.sh BUILD_DIR OUT_DIR [STEPS]"; exit 2; }
build=$1 out=$2 steps=${3:-4}
bin=$build/bin/linearnexus
[ -x "$bin" ] || { echo "lora_memory: no executable $bin (build the linearnexus target)"; exit 1; }
[ -x /usr/bin/time ] || { echo "lora_memory: needs GNU time (apt-get install time)"; exit 1; }
mkdir -p "$out"
rm -rf "$out/base" "$out/full" "$out/lora"

common="seed: 1337
device: cpu
precision: fp32
task: {name: arithmetic, min_digits: 1, max_digits: 3, operators: [\"+\"], eval_size: 16}
data: {path: task, tokenizer: char, seq_len: 256, val_fraction: 0.05}
sample: {num_samples: 0}"
cat > "$out/base.yaml" <<EOF
name: lora_memory_base
$common
model: {preset: gpt-small, vocab_size: auto}
optimizer: {name: adamw, lr: 3.0e-4}
trainer: {name: sft, max_steps: 1, batch_size: 2, log_every: 1, eval_every: 0, out_dir: "$out/base"}
EOF
"$bin" run "$out/base.yaml" --no-sample > "$out/base.log" 2>&1 || { tail -20 "$out/base.log"; exit 1; }

for kind in full lora; do
  lora=""
  [ $kind == lora ] && lora=", lora: {rank: 16, alpha: 32, targets: [all-linear]}"
  cat > "$out/$kind.yaml" <<EOF
name: lora_memory_$kind
$common
model: {preset: init_from$lora}
optimizer: {name: adamw, lr: 1.0e-4, weight_decay: 0.0}
trainer: {name: sft, init_from: "$out/base", max_steps: $steps, batch_size: 8, log_every: 1, eval_every: 0,
          save_every: 0, out_dir: "$out/$kind"}
EOF
  /usr/bin/time -f "%M" -o "$out/$kind.rss" "$bin" run "$out/$kind.yaml" --no-sample > "$out/$kind.log" 2>&1 ||
    { tail -20 "$out/$kind.log"; exit 1; }
done

python3 - "$out" <<'EOF'
import json, sys, statistics
out = sys.argv[1]
print("| run | peak RSS MiB | ms a step (median, after the first) | trainable parameters |")
print("|---|---|---|---|")
for kind in ("full", "lora"):
    rss = int(open(f"{out}/{kind}.rss").read().split()[-1]) / 1024
    ms = [json.loads(l)["ms_per_step"] for l in open(f"{out}/{kind}/metrics.jsonl") if "ms_per_step" in l]
    trainable = "all"
    for line in open(f"{out}/{kind}.log"):
        if "parameters train" in line:  # the run's description: "LoRA: ... N parameters train, ..."
            trainable = line.split(";")[-1].split("parameters train")[0].strip()
            break
    print(f"| {kind} | {rss:,.0f} | {statistics.median(ms[1:] or ms):.0f} | {trainable} |")
EOF
