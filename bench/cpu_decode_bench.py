#!/usr/bin/env python3
"""CPU decode time per token of `linearnexus sample`, for one or more builds (issue 17: "the CPU path
unchanged or faster, decode per token on 2 cores reported before/after").

Each build trains its own checkpoint of each model (one SFT step on builtin:arithmetic: random-ish
weights, same seed and config for every build), then times `linearnexus sample` at two lengths; the
difference over the extra tokens is the decode time per token (process start, plugin and checkpoint
loading and the prefill cancel out). Best of --repeats, per thread count (LINEARNEXUS_NUM_THREADS).

LibTorch's OpenMP threads spin, so anything else running on the machine skews the times many-fold:
each timed run reads /proc/stat and counts the CPU time other processes took meanwhile; a run where
they took more than --max-other cores on average is dropped and retried after a pause.

  python3 bench/cpu_decode_bench.py --build old=/tmp/old-build --build new=build --work /tmp/cpu_decode
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

# name -> model section (YAML flow): the quickstart's GPT, and attention / mamba at ~20M parameters.
MODELS = {
    "quickstart-gpt": "{hidden_size: 128, n_layer: 4, max_seq_len: 512, block_pattern: [attention], "
                      "blocks: {attention: {n_head: 4}}}",
    # The same GPT with room for --long 2016: its sub-millisecond step needs ~2,000 tokens to stand
    # out of the start-up's jitter.
    "quickstart-gpt-2k": "{hidden_size: 128, n_layer: 4, max_seq_len: 2048, block_pattern: [attention], "
                         "blocks: {attention: {n_head: 4}}}",
    "attention-512x8": "{hidden_size: 512, n_layer: 8, max_seq_len: 512, block_pattern: [attention], "
                       "blocks: {attention: {n_head: 8}}}",
    "mamba-512x8": "{hidden_size: 512, n_layer: 8, max_seq_len: 512, block_pattern: [mamba]}",
}

CONFIG = """name: cpu_decode_{model}
seed: 1337
device: cpu
data: {{path: "builtin:arithmetic", tokenizer: char, seq_len: 32, val_fraction: 0.05}}
model: {model_section}
optimizer: {{name: adamw, lr: 1.0e-3}}
trainer: {{name: sft, max_steps: 1, batch_size: 2, log_every: 1, eval_every: 0, out_dir: {out}}}
sample: {{prompt: "12+35=", num_samples: 0}}
"""


def busy_jiffies():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v) - v[3] - v[4]  # all but idle and iowait


def timed(cmd, env):
    """Wall seconds of cmd and the CPU (in cores) other processes used meanwhile."""
    tick = os.sysconf("SC_CLK_TCK")
    r0, b0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), busy_jiffies(), time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall, b1, r1 = time.perf_counter() - t0, busy_jiffies(), resource.getrusage(resource.RUSAGE_CHILDREN)
    mine = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return wall, max(0.0, (b1 - b0) / tick - mine) / wall


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", action="append", required=True, help="NAME=BUILD_DIR (repeatable)")
    ap.add_argument("--work", required=True, help="folder for configs and checkpoints")
    ap.add_argument("--models", default="quickstart-gpt,attention-512x8,mamba-512x8", help="comma-separated, of: " + ", ".join(MODELS))
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--short", type=int, default=16, help="new tokens of the short run")
    ap.add_argument("--long", type=int, default=416, help="new tokens of the long run")
    ap.add_argument("--greedy", action="store_true", help="temperature 0 (argmax) instead of the checkpoint's sampling")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-other", type=float, default=0.1, help="cores other processes may use during a run")
    ap.add_argument("--max-tries", type=int, default=20, help="dropped runs tolerated per measurement")
    a = ap.parse_args()
    builds = []
    for spec in a.build:
        name, sep, path = spec.partition("=")
        exe = os.path.join(path, "bin", "linearnexus")
        if not sep or not os.access(exe, os.X_OK):
            sys.exit(f"--build {spec}: want NAME=BUILD_DIR with an executable BUILD_DIR/bin/linearnexus")
        builds.append((name, exe))
    models = a.models.split(",")
    for m in models:
        if m not in MODELS:
            sys.exit(f"--models: unknown model '{m}' (have: {', '.join(MODELS)})")
    if not 0 < a.short < a.long:
        sys.exit("--short and --long: want 0 < short < long")
    os.makedirs(a.work, exist_ok=True)

    for name, exe in builds:
        for m in models:
            out = os.path.join(a.work, name, m)
            if os.path.exists(os.path.join(out, "latest.safetensors")):
                continue
            cfg = os.path.join(a.work, f"{name}-{m}.yaml")
            with open(cfg, "w") as f:
                f.write(CONFIG.format(model=m, model_section=MODELS[m], out=json.dumps(out)))
            subprocess.run([exe, "run", cfg, "--no-sample"], check=True, stdout=subprocess.DEVNULL)

    # Repeats interleave the builds (old short, old long, new short, new long, then again), so that a
    # slow spell of the machine (a noisy neighbour of this VM) hits every build alike.
    for threads in a.threads.split(","):
        env = dict(os.environ, LINEARNEXUS_NUM_THREADS=threads, OMP_NUM_THREADS=threads)
        for m in models:
            times = {(name, n): [] for name, _ in builds for n in (a.short, a.long)}
            dropped = 0
            for _ in range(a.repeats):
                for name, exe in builds:
                    for n in (a.short, a.long):
                        cmd = [exe, "sample", "--checkpoint", os.path.join(a.work, name, m), "--max-tokens", str(n),
                               "--seed", "0", "--device", "cpu"] + (["--temperature", "0"] if a.greedy else [])
                        while True:
                            wall, other = timed(cmd, env)
                            if other <= a.max_other:
                                times[(name, n)].append(wall)
                                break
                            dropped += 1
                            if dropped > a.max_tries:
                                sys.exit(f"{name} {m}: the machine never stayed idle (others used {other:.2f} cores)")
                            time.sleep(30)
            for name, _ in builds:
                short, long = min(times[(name, a.short)]), min(times[(name, a.long)])
                print(json.dumps({"build": name, "model": m, "threads": int(threads), "greedy": a.greedy,
                                  "ms_per_token": round(1000 * (long - short) / (a.long - a.short), 3),
                                  "best_short_s": round(short, 3), "best_long_s": round(long, 3),
                                  "dropped_runs": dropped}), flush=True)

if __name__ == "__main__":
    main()
