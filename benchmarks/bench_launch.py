"""One process or two? The default profile's inverse_sft, self_augment and rate under `humpback launch`.

Each stage runs as dvc.yaml runs it (`humpback launch --config_file profiles/accelerate/ddp.yaml
--num_processes N stages/<stage>.py`), in a scratch copy of the workspace, from an empty result cache
(the GGUF conversion is done once beforehand, so it is in no figure). inverse_sft keeps the global batch:
4 examples per step in one process, 2 per process in two. self_augment and rate read the committed
models, so the two process counts must write identical outs, which this script checks.

One process computes on both cores (2 threads); two processes compute on one core each (torchrun sets
OMP_NUM_THREADS=1). Runs alternate 1, 2, 1, 2 ... (`--repeats`), so load from elsewhere falls on both.

    python benchmarks/bench_launch.py --repeats 1      # from the repo root, with the outs checked out
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from machine import cpu_model  # noqa: E402

STAGES = {  # stage: the outs compared between process counts (None: trained, compared by loss)
    "inverse_sft": None,
    "self_augment": ["data/self_augmented.json", "metrics/self_augment.json"],
    "rate": ["data/rated_round1.json", "metrics/rate.json", "plots/score_histogram.json"],
}
COPY = ["params.yaml", "stages", "data", "models", "profiles", "metrics", "plots"]


def workspace(root: str, processes: int) -> str:
    ws = tempfile.mkdtemp(prefix=f"launch{processes}-", dir=root)
    for rel in COPY:
        src = os.path.join(os.getcwd(), rel)
        (shutil.copytree if os.path.isdir(src) else shutil.copy2)(src, os.path.join(ws, rel))
    with open(os.path.join(ws, "params.yaml")) as f:
        params = yaml.safe_load(f)
    params["launch"]["num_processes"] = processes
    batch = params["inverse_sft"]["per_device_train_batch_size"]
    if batch % processes:
        raise SystemExit(f"inverse_sft.per_device_train_batch_size={batch} does not split over {processes} processes")
    params["inverse_sft"]["per_device_train_batch_size"] = batch // processes
    with open(os.path.join(ws, "params.yaml"), "w") as f:
        yaml.safe_dump(params, f, sort_keys=False)
    return ws


def run_stage(ws: str, stage: str, processes: int, cache: str) -> float:
    os.makedirs(cache, exist_ok=True)
    warm = os.path.join(os.environ.get("HUMPBACK_CACHE_DIR") or os.path.expanduser("~/.cache/humpback"), "models")
    if os.path.isdir(warm) and not os.path.exists(os.path.join(cache, "models")):
        os.symlink(warm, os.path.join(cache, "models"))  # the converted GGUF: not part of any stage's time
    env = {**os.environ, "HUMPBACK_CACHE_DIR": cache, "TQDM_DISABLE": "1"}
    cmd = ["humpback", "launch", "--config_file", "profiles/accelerate/ddp.yaml", "--num_processes",
           str(processes), f"stages/{stage}.py"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ws, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return seconds


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--stages", default=",".join(STAGES))
    args = ap.parse_args()
    stages = args.stages.split(",")
    root = tempfile.mkdtemp(prefix="bench-launch-")
    spaces = {(s, n): workspace(root, n) for s in stages for n in (1, 2)}  # inverse_sft rewrites models/backward
    times = {(s, n): [] for s in stages for n in (1, 2)}
    load0 = os.getloadavg()[0]
    for r in range(args.repeats):
        for stage in stages:
            for n in (1, 2):
                cache = os.path.join(root, f"cache-{stage}-{n}-{r}")
                times[stage, n].append(run_stage(spaces[stage, n], stage, n, cache))
                print(f"{stage} x{n} round {r}: {times[stage, n][-1]:.1f}s (load {os.getloadavg()[0]:.2f})",
                      file=sys.stderr)
    print(f"CPU: {cpu_model()} x{os.cpu_count()}; load {load0:.2f} before, {os.getloadavg()[0]:.2f} after; "
          f"{args.repeats} run(s) each, best shown\n")
    print("| stage | 1 process (s) | 2 processes (s) | 2 vs 1 | outs |")
    print("|---|---:|---:|---:|---|")
    for stage in stages:
        one, two = min(times[stage, 1]), min(times[stage, 2])
        if STAGES[stage] is None:
            m1, m2 = (json.load(open(os.path.join(spaces[stage, n], f"metrics/{stage}.json"))) for n in (1, 2))
            outs = f"train_loss {m1['train_loss']} vs {m2['train_loss']}, eval_loss {m1['eval_loss']} vs {m2['eval_loss']}"
        else:
            same = all(filecmp.cmp(os.path.join(spaces[stage, 1], rel), os.path.join(spaces[stage, 2], rel), shallow=False)
                       for rel in STAGES[stage])
            outs = "identical" if same else "DIFFER"
        print(f"| {stage} | {one:.1f} | {two:.1f} | {one / two:.2f}x | {outs} |")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
