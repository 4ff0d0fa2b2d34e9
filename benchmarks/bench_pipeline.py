"""How far is a default `dvc repro` from its compute floor, stage by stage, on this CPU?

Each stage appends its seconds and the tokens it pushed through the model to the git-ignored
`logs/work.jsonl` (humpback.stage, humpback.work). From those token counts this prints each stage's FLOPs,

    forward 2N per token (prompts without padding, a shared prefix once, each generated token),
    LoRA training 4N per token (forward 2N, backward of the activations 2N; no weight gradients of the base),

with N the parameter count of the default model (SmolLM2-135M-Instruct: 134.5M, the tied LM head counted
once as a matmul), then the stage's seconds, its floor (FLOPs at the measured matmul peak of the model's own
shapes, in the resolved model.dtype), and the stage's share of that peak. Attention's sequence-length term
(about 7% at 256 tokens) and the optimizer are left out of the FLOPs, so the floor is a slight underestimate.

    python benchmarks/bench_pipeline.py --run      # HUMPBACK_CACHE_DIR=<empty> dvc repro -f, then the table
    python benchmarks/bench_pipeline.py            # the table of the last run in logs/work.jsonl

The stage seconds are each stage's main() (imports and Python start-up are in the wall time only).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT, HERE]

WORK_LOG = os.path.join(ROOT, "logs", "work.jsonl")


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", action="store_true", help="run `dvc repro -f` with an empty model and result cache first")
    ap.add_argument("--cache-dir", help="with --run: HUMPBACK_CACHE_DIR (default: a new empty directory)")
    ap.add_argument("--peak", type=float, help="GFLOP/s to use as the matmul peak instead of measuring it now "
                    "(when the machine is busy now; name where it was measured)")
    ap.add_argument("--out", help="also write the report to this file")
    return ap.parse_args()


def last_run(since: str | None = None) -> tuple[list[dict], str]:
    """The records of the last complete run: from the last `prepare` record on (or from `since`)."""
    if not os.path.exists(WORK_LOG):
        sys.exit(f"{WORK_LOG}: no stage has run here yet (dvc repro, or --run)")
    with open(WORK_LOG, encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    if since:
        records = [r for r in records if r["time"] >= since]
    starts = [i for i, r in enumerate(records) if r["stage"] == "prepare"]
    if not since and starts:
        records = records[starts[-1]:]
    if not records:
        sys.exit(f"{WORK_LOG}: no stage records since {since}")
    return records, records[0]["time"]


def main():
    args = parse_args()
    import torch

    from humpback import models, work
    from humpback.config import load_params
    from machine import cpu_model, matmul_peak

    wall = None
    if args.run:
        cache = args.cache_dir or tempfile.mkdtemp(prefix="humpback-bench-")
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        load0 = os.getloadavg()[0]
        t = time.perf_counter()
        subprocess.run(["dvc", "repro", "-f"], cwd=ROOT, check=True, env={**os.environ, "HUMPBACK_CACHE_DIR": cache})
        wall = (time.perf_counter() - t, load0, os.getloadavg()[0])
        records, _ = last_run(since)
    else:
        records, since = last_run()

    params = load_params(os.path.join(ROOT, "params.yaml"))
    dtype_name = models.resolve_dtype(params.model.dtype)
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(models.resolve(params.model.base))
    with torch.device("meta"):
        from transformers import AutoModelForCausalLM

        n_params = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
    peak = (args.peak or matmul_peak(config, getattr(torch, dtype_name))) * 1e9  # FLOP/s

    lines = [f"# Pipeline against its compute floor: {since} (UTC)", "",
             f"CPU: {cpu_model()} x{os.cpu_count()}; torch {torch.__version__}; model.dtype {params.model.dtype} "
             f"resolved to {dtype_name}; N = {n_params / 1e6:.1f}M parameters; "
             f"matmul peak of the model's shapes at {dtype_name}: {peak / 1e9:.0f} GFLOP/s", "",
             "| stage | forward tokens (padded) | trained tokens | eval tokens | TFLOP | seconds | floor (s) | x floor | share of peak |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    total = {"flops": 0.0, "seconds": 0.0}
    for r in records:
        tok = r.get("tokens", {})
        flops = work.flops(tok, n_params)
        floor = flops / peak
        total["flops"] += flops
        total["seconds"] += r["seconds"]
        ratio = f"{r['seconds'] / floor:.2f}" if floor else "-"
        share = f"{100 * floor / r['seconds']:.0f}%" if floor and r["seconds"] else "-"
        lines.append(f"| {r['stage']} | {tok.get('forward', 0)} ({tok.get('forward_padded', 0)}) | {tok.get('train', 0)} "
                     f"| {tok.get('train_eval', 0)} | {flops / 1e12:.2f} | {r['seconds']:.1f} | {floor:.1f} | {ratio} | {share} |")
    floor = total["flops"] / peak
    lines.append(f"| **sum of stages** | | | | {total['flops'] / 1e12:.2f} | {total['seconds']:.1f} | {floor:.1f} "
                 f"| {total['seconds'] / floor:.2f} | {100 * floor / total['seconds']:.0f}% |")
    if wall:
        seconds, load0, load1 = wall
        lines.append(f"| **`dvc repro -f`, wall** | | | | | {seconds:.1f} | {floor:.1f} | {seconds / floor:.2f} "
                     f"| {100 * floor / seconds:.0f}% |")
        lines += ["", f"load average {load0:.2f} before, {load1:.2f} after"]
    loads = [r["load"] for r in records]
    lines += [f"stage loads (1-min average at each stage's end): {min(loads):.2f}-{max(loads):.2f}"]
    report = "\n".join(lines)
    print(report)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(report + "\n")


if __name__ == "__main__":
    main()
