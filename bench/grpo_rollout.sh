#!/usr/bin/env bash
# GRPO's rollout time per step on a gpt-small-sized policy (issue 17: "GRPO on a gpt-small-sized
# policy: rollout time per step before and after").
# Usage: bash bench/grpo_rollout.sh BUILD_DIR OUT_DIR [STEPS [DEVICE]] [-- --set KEY=VALUE ...]
# (the --set overrides go to the GRPO run only, e.g. a smaller trainer.prompts_per_step for a CPU try)
#
# One SFT step makes the starting checkpoint (GRPO needs one: the policy's weights and the KL
# reference), then STEPS GRPO steps on the arithmetic task: 32 prompts x 8 completions of up to 64
# tokens, bf16 on cuda. The policy is gpt-small (12 layers, C = 768: 85M parameters) with the task's
# 13-character vocabulary (GPT-2's 50,257 ids would be sampled outside it), so its LM head is tiny.
# One SFT step leaves it near uniform: a completion ends at its first newline (~9 tokens on average),
# but a batch of 256 decodes until its longest row stops (for a stop chance of ~1/9 a token, the
# longest of 256 rows runs ~50 tokens: an estimate, not logged). Prints one line
# per logged step: ms_per_step (the whole step) and, from builds that log it, rollout_ms (the rollout
# alone; older builds do not). The first step includes warm-up (cuBLAS plans, the decode engine's
# CUDA-graph capture) and the last one the eval (eval_accuracy): read the ones between. Only the
# config files travel with this script, so it times older builds too (their config schema is the same).
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: bash bench/grpo_rollout.sh BUILD_DIR OUT_DIR [STEPS [DEVICE]] [-- --set K=V ...]"; exit 2; }
build=$1 out=$2
shift 2
steps=6 device=cuda
if [ $# -gt 0 ] && [ "$1" != "--" ]; then steps=$1; shift; fi
if [ $# -gt 0 ] && [ "$1" != "--" ]; then device=$1; shift; fi
[ $# -gt 0 ] && [ "$1" == "--" ] && shift
bin=$build/bin/linearnexus
[ -x "$bin" ] || { echo "grpo_rollout: no executable $bin (build the linearnexus target)"; exit 1; }
[[ $steps =~ ^[1-9][0-9]*$ ]] || { echo "grpo_rollout: STEPS must be a positive integer (got '$steps')"; exit 2; }
precision=bf16
[ "$device" == cpu ] && precision=fp32
mkdir -p "$out"
rm -rf "$out/sft" "$out/grpo"

common="seed: 1337
device: $device
precision: $precision
task: {name: arithmetic, min_digits: 1, max_digits: 2, operators: [\"+\"], eval_size: 16}
data: {path: task, tokenizer: char, seq_len: 48, val_fraction: 0.05}
model: {preset: gpt-small, vocab_size: auto}
sample: {num_samples: 0}"
cat > "$out/sft.yaml" <<EOF
name: grpo_rollout_sft
$common
optimizer: {name: adamw, lr: 3.0e-4, weight_decay: 0.0}
trainer: {name: sft, max_steps: 1, batch_size: 8, log_every: 1, eval_every: 0, out_dir: "$out/sft"}
EOF
cat > "$out/grpo.yaml" <<EOF
name: grpo_rollout
$common
optimizer: {name: adamw, lr: 1.0e-6, weight_decay: 0.0}
trainer: {name: grpo, init_from: "$out/sft", max_steps: $steps, prompts_per_step: 32, group_size: 8,
          max_new_tokens: 64, temperature: 1.0, log_every: 1, eval_every: 0, out_dir: "$out/grpo"}
EOF
"$bin" run "$out/sft.yaml" --no-sample > "$out/sft.log" 2>&1 || { tail -20 "$out/sft.log"; exit 1; }
"$bin" run "$out/grpo.yaml" --no-sample "$@" > "$out/grpo.log" 2>&1 || { tail -20 "$out/grpo.log"; exit 1; }
python3 - "$out/grpo/metrics.jsonl" <<'EOF'
import json, sys
for line in open(sys.argv[1]):
    m = json.loads(line)
    if "ms_per_step" not in m:
        continue
    rollout = f"{m['rollout_ms']:.1f}" if "rollout_ms" in m else "not logged"
    print(f"step {m['step']}: ms_per_step {m['ms_per_step']:.1f} rollout_ms {rollout} response_len {m['response_len']:.1f}")
EOF
