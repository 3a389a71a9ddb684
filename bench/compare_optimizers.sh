#!/usr/bin/env bash
# AdamW vs Muon vs Sophia on a small char GPT or Mamba on tiny Shakespeare, same step budget.
#
#   MODEL=gpt|mamba bench/compare_optimizers.sh [build-dir] [out-dir]
#   (defaults: gpt, build, runs/optimizer_comparison_$MODEL)
#
# For each optimizer a short learning-rate sweep at the full step budget (the sweep IS the
# comparison: each optimizer is reported at its best swept lr by final validation loss). Every run
# goes through `linearnexus run` with --set overrides; the numbers come from the runs'
# metrics.jsonl. Writes summary.tsv, curves_<optimizer>.tsv and, when gnuplot is installed
# (apt-get install gnuplot-nox), docs/optimizer_comparison_$MODEL.png.
# Env: STEPS (default 300), THREADS (LINEARNEXUS_NUM_THREADS, default 2), KEEP=1 keeps runs that
# already finished (to add sweep points or redo the plot without rerunning everything),
# ADAMW_EXTRA_LRS (more adamw lrs, e.g. "3e-2" when the best lr is the sweep's largest).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
MODEL=${MODEL:-gpt}
OUT=${2:-runs/optimizer_comparison_$MODEL}
STEPS=${STEPS:-300}
export LINEARNEXUS_NUM_THREADS=${THREADS:-2}
BIN=$BUILD/bin/linearnexus
DATA=${DATA:-../shared/data/tinyshakespeare.txt}
mkdir -p "$OUT"

# 4 layers, hidden 128, seq 64, batch 16; cosine to lr/10 after 30 warmup steps.
case $MODEL in
  gpt) MODEL_YAML="block_pattern: [attention], blocks: {attention: {n_head: 4}}"; TITLE="char GPT (0.86M params)" ;;
  mamba) MODEL_YAML="block_pattern: [mamba]"; TITLE="char Mamba (0.47M params)" ;;
  *) echo "MODEL must be gpt or mamba (got '$MODEL')" >&2; exit 2 ;;
esac
cat >"$OUT/base.yaml" <<EOF
name: optimizer-comparison
seed: 1337
data: {path: $(realpath "$DATA"), tokenizer: char, seq_len: 64, val_fraction: 0.1}
model: {hidden_size: 128, n_layer: 4, max_seq_len: 64, dropout: 0.0, $MODEL_YAML}
optimizer: {name: adamw}
schedule: {warmup_steps: 30, decay: cosine}
trainer: {name: sft, max_steps: $STEPS, batch_size: 16, log_every: 25, eval_every: 25, eval_batches: 8, save_every: 0}
sample: {num_samples: 0}
EOF

# optimizer | lr values swept | extra --set overrides
SWEEP=(
  "adamw|1e-3 3e-3 1e-2${ADAMW_EXTRA_LRS:+ $ADAMW_EXTRA_LRS}|optimizer.weight_decay=0.1"
  "muon|0.01 0.02 0.05|optimizer.adamw_lr=3e-3"
  "sophia|1e-4 3e-4 1e-3 3e-3|optimizer.rho=0.04 optimizer.weight_decay=0.1"
)

final_val() { tail -n 1 "$1/metrics.jsonl" | sed -E 's/.*"val_loss":([0-9.eE+-]+).*/\1/'; }

printf "optimizer\tlr\tfinal_val_loss\tms_per_step\twall_s\n" >"$OUT/summary.tsv"
for entry in "${SWEEP[@]}"; do
  IFS='|' read -r opt lrs extra <<<"$entry"
  for lr in $lrs; do
    dir="$OUT/${opt}_lr$lr"
    if [ "${KEEP:-0}" = 1 ] && grep -q "\"step\":$STEPS," "$dir/metrics.jsonl" 2>/dev/null; then
      echo "== $opt lr $lr (kept)"
    else
    rm -rf "$dir"
    sets=(--set "trainer.out_dir=$dir" --set "schedule.min_lr=$(awk "BEGIN{print $lr/10}")")
    for e in $extra; do sets+=(--set "$e"); done
    echo "== $opt lr $lr"
    "$BIN" run "$OUT/base.yaml" --optimizer "$opt" --lr "$lr" "${sets[@]}" 2>&1 | grep -E "optimizer:|step $STEPS/" || true
    fi
    # ms/step: the mean over the logged intervals (each includes its share of evaluation).
    ms=$(grep -o '"ms_per_step":[0-9.eE+-]*' "$dir/metrics.jsonl" | cut -d: -f2 | awk '{s+=$1; n++} END {printf "%.1f", s/n}')
    wall=$(tail -n 1 "$dir/metrics.jsonl" | sed -E 's/.*"elapsed_sec":([0-9.eE+-]+).*/\1/')
    printf "%s\t%s\t%s\t%s\t%.1f\n" "$opt" "$lr" "$(final_val "$dir")" "$ms" "$wall" >>"$OUT/summary.tsv"
  done
done
column -t "$OUT/summary.tsv"

# The best lr per optimizer -> curves (step, elapsed seconds, val loss).
for opt in adamw muon sophia; do
  best=$(awk -F'\t' -v o="$opt" '$1==o {print $3, $2}' "$OUT/summary.tsv" | sort -g | head -n 1 | cut -d' ' -f2)
  echo "$opt: best lr $best"
  grep '"val_loss"' "$OUT/${opt}_lr$best/metrics.jsonl" |
    sed -E 's/.*"elapsed_sec":([0-9.eE+-]+).*"step":([0-9]+).*"val_loss":([0-9.eE+-]+).*/\2 \1 \3/' >"$OUT/curves_$opt.tsv"
  echo "$opt $best" >>"$OUT/best.txt.tmp"
done
mv "$OUT/best.txt.tmp" "$OUT/best.txt"

if command -v gnuplot >/dev/null; then
  mkdir -p docs
  read -r _ lr_a <<<"$(grep adamw "$OUT/best.txt")"
  read -r _ lr_m <<<"$(grep muon "$OUT/best.txt")"
  read -r _ lr_s <<<"$(grep sophia "$OUT/best.txt")"
  gnuplot <<EOF
set terminal pngcairo size 1200,450 font ",10"
set output "docs/optimizer_comparison_$MODEL.png"
set multiplot layout 1,2 title "$TITLE on tiny Shakespeare, $STEPS steps, 2-core CPU"
set grid
set ylabel "validation loss (nats/char)"
set key top right
set xlabel "step"
plot "$OUT/curves_adamw.tsv" u 1:3 w lp t "adamw lr $lr_a", \
     "$OUT/curves_muon.tsv" u 1:3 w lp t "muon lr $lr_m", \
     "$OUT/curves_sophia.tsv" u 1:3 w lp t "sophia lr $lr_s"
set xlabel "wall time (s)"
plot "$OUT/curves_adamw.tsv" u 2:3 w lp t "adamw", \
     "$OUT/curves_muon.tsv" u 2:3 w lp t "muon", \
     "$OUT/curves_sophia.tsv" u 2:3 w lp t "sophia"
unset multiplot
EOF
  echo "wrote docs/optimizer_comparison_$MODEL.png"
else
  echo "gnuplot not found (apt-get install gnuplot-nox): no plot"
fi
