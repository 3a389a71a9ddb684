#!/usr/bin/env bash
# Plot a run's metrics.jsonl: training loss and validation loss against step, and tokens/s.
# Usage: scripts/plot_metrics.sh RUN_DIR [RUN_DIR...]   -> RUN_DIR/metrics.png (or compare.png for several)
# Needs gnuplot and python3 (to flatten the JSON lines into columns); scripts/setup.sh installs both
# (gnuplot-nox). tests/test_observability.cpp runs it on a fresh run.
set -euo pipefail
(($#)) || { echo "usage: $0 RUN_DIR [RUN_DIR...]" >&2; exit 2; }
command -v gnuplot >/dev/null || { echo "error: gnuplot not found; apt-get install gnuplot-nox" >&2; exit 1; }
command -v python3 >/dev/null || { echo "error: python3 not found; apt-get install python3" >&2; exit 1; }
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
plot_loss=() plot_val=() plot_tps=()
for run in "$@"; do
  [ -f "$run/metrics.jsonl" ] || { echo "error: $run/metrics.jsonl not found (is $run a run folder?)" >&2; exit 1; }
  name=$(basename "$run")
  python3 - "$run/metrics.jsonl" "$tmp/$name.tsv" <<'PY'
import json, sys
with open(sys.argv[1]) as f, open(sys.argv[2], "w") as out:
    for line in f:
        try: m = json.loads(line)
        except ValueError: continue
        out.write("%s\t%s\t%s\t%s\n" % (m.get("step", "?"), m.get("loss", "?"), m.get("val_loss", "?"),
                                        m.get("tokens_per_sec", "?")))
PY
  plot_loss+=("'$tmp/$name.tsv' using 1:2 with lines title '$name train'")
  plot_val+=("'$tmp/$name.tsv' using 1:3 with linespoints title '$name val'")
  plot_tps+=("'$tmp/$name.tsv' using 1:4 with lines title '$name'")
done
out="$1/metrics.png"; (($# > 1)) && out="$(dirname "$1")/compare.png"
join() { local IFS=,; echo "$*"; }
gnuplot <<GP
set terminal pngcairo size 1100,800 noenhanced
set output '$out'
set datafile missing '?'
set multiplot layout 2,1
set title 'loss'; set xlabel 'step'; set ylabel 'nats/token'; set grid
plot $(join "${plot_loss[@]}" "${plot_val[@]}")
set title 'throughput'; set ylabel 'tokens/s'
plot $(join "${plot_tps[@]}")
unset multiplot
GP
echo "wrote $out"
