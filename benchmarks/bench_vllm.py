"""Native engine vs vLLM, side by side: the same prompts in the same run, start-up included.

Two jobs, each as its stage runs it with the default profile's model (SmolLM2-135M-Instruct):
- `self_augment`: the backward model (base + models/backward merged) writes an instruction for each of
  `--n` sampled LIMA responses, greedy, 48 new tokens, batch 32 (prompts.BACKWARD_PREFIX +
  prompts.backward_suffix(...), as stages/self_augment.py builds them);
- `rate`: the rater (base + models/seed, M0, in its chat format) gives its digit distribution after
  `Score:` for `--n` filtered self-augmented pairs (rater_suffixes, the `expected` scoring's
  prompts), batch 8, through `next_token_features` as Rater.probabilities calls it;
- `rate_probe`: the default scoring, `probe`: the same prompts plus the hidden state (recovered from vLLM's
  full log-probabilities) and relevance (continuation_logprobs), through the fitted probe in models/rater.

Each configuration opens its own engine (native: load the model; vLLM: start the engine, torch.compile
unless eager) and computes without the result cache. Reported: start-up, compute, whole job
(start-up + compute), and agreement with the native engine at the same dtype (greedy strings equal;
rater: the same most likely digit, and the largest probability difference).

    python benchmarks/bench_vllm.py                 # in an environment with vLLM (scripts/setup-vllm)
    python benchmarks/bench_vllm.py --n 16 --no-compiled   # quicker

Record `cat /proc/loadavg` with the numbers; compare speeds only as ratios within one run.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def cpu_model() -> str:
    with open("/proc/cpuinfo") as f:
        name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    return f"{name} x{len(os.sched_getaffinity(0))}"


def self_augment_job(n: int):
    from humpback import formats, prompts
    from humpback.config import load_params
    from humpback.engine import Decoding

    params = load_params(os.path.join(ROOT, "params.yaml"))
    records = formats.sample(formats.load_json(os.path.join(ROOT, "data/lima_single_turn.json")), n,
                             params.augment.seed, "lima")
    max_tokens = params.inverse_sft.max_response_tokens
    decoding = Decoding(max_new_tokens=params.augment.max_new_tokens)

    def run(engine):
        suffixes = [prompts.backward_suffix(r["response"], engine.tok, max_tokens) for r in records]
        return engine.generate(prompts.BACKWARD_PREFIX, suffixes, decoding, desc="self_augment")

    adapter = os.path.join(ROOT, "models/backward")
    return dict(name="self_augment", adapter=adapter, chat=False, batch_size=params.augment.batch_size, run=run)


def rate_job(n: int):
    from humpback import formats
    from humpback.curation.rater import rater_suffixes
    from humpback.config import load_params

    params = load_params(os.path.join(ROOT, "params.yaml"))
    pairs = formats.load_json(os.path.join(ROOT, "data/self_augmented_filtered.json"))[:n]

    def run(engine):
        head, suffixes, candidates = rater_suffixes(engine.tok, pairs)
        feats = engine.next_token_features(head, suffixes, candidates, desc="rate")
        return [f["logprobs"] for f in feats]

    # expected needs the digit log-probabilities only: vLLM's logprob_token_ids, no hidden state
    return dict(name="rate (expected)", adapter=_rater_adapter(), chat=True, batch_size=params.curation.batch_size,
                run=run, vllm_kwargs={"hidden_state": False})


def rate_probe_job(n: int):
    """The default scoring: the fitted probe (models/rater) on the rater's hidden state, digit log-probabilities
    and relevance (two continuation_logprobs passes): rater_features, then gated_probs."""
    import torch

    from humpback import formats
    from humpback.curation.probe import gated_probs
    from humpback.curation.rater import Rater, rater_features
    from humpback.config import load_params

    params = load_params(os.path.join(ROOT, "params.yaml"))
    pairs = formats.load_json(os.path.join(ROOT, "data/self_augmented_filtered.json"))[:n]
    rater = Rater.load(os.path.join(ROOT, "models/rater"))

    def run(engine):
        feats = rater_features(engine, pairs, rater.relevance_tokens)
        return torch.log(gated_probs(rater.tensors, feats)).tolist()

    return dict(name="rate (probe)", adapter=_rater_adapter(), chat=True, batch_size=params.curation.batch_size,
                run=run, vllm_kwargs={"hidden_state": True})


def _rater_adapter():
    seed = os.path.join(ROOT, "models/seed")  # the rater M0 (curation.rater: self)
    return seed if os.path.exists(os.path.join(seed, "adapter_model.safetensors")) else None


def run_native(job, base: str, dtype: str):
    from humpback import models
    from humpback.engine import Engine

    t0 = time.perf_counter()
    tok = models.load_tokenizer(job["adapter"] or base)
    model = models.load_model(base, False, dtype, adapter=job["adapter"])
    engine = Engine(model, tok, "bench", job["batch_size"], None,
                    add_special_tokens=not (job["chat"] and tok.chat_template))
    t1 = time.perf_counter()
    out = job["run"](engine)
    t2 = time.perf_counter()
    del engine, model
    gc.collect()
    return out, t1 - t0, t2 - t1


def run_vllm(job, base: str, dtype: str, eager: bool):
    from humpback.config import ModelParams
    from humpback.engine.vllm import open_vllm_engine

    t0 = time.perf_counter()
    engine = open_vllm_engine(base, ModelParams(base=base, dtype=dtype), job["batch_size"], adapter=job["adapter"],
                              chat=job["chat"], enforce_eager=eager, max_model_len=4096, **job.get("vllm_kwargs", {}))
    engine.cache = None  # measure the computation, not the result cache
    t1 = time.perf_counter()
    out = job["run"](engine)
    t2 = time.perf_counter()
    engine.close()
    del engine
    gc.collect()
    return out, t1 - t0, t2 - t1


def agreement(job_name: str, out, ref) -> str:
    if job_name == "self_augment":
        return f"{sum(a == b for a, b in zip(out, ref))}/{len(ref)} equal"
    import math

    same = sum(max(range(5), key=lambda k: a[k]) == max(range(5), key=lambda k: b[k]) for a, b in zip(out, ref))
    diff = max(abs(math.exp(x) - math.exp(y)) for a, b in zip(out, ref) for x, y in zip(a, b))
    return f"{same}/{len(ref)} same argmax, max dP {diff:.1e}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64, help="prompts per job")
    ap.add_argument("--jobs", default="self_augment,rate,rate_probe")
    ap.add_argument("--no-compiled", action="store_true", help="skip vLLM with torch.compile (its start-up is long)")
    ap.add_argument("--out", help="write every configuration's outputs to this JSON file")
    args = ap.parse_args()

    from humpback.config import load_params
    from humpback.engine.vllm_setup import merged_model_dir

    base = load_params(os.path.join(ROOT, "params.yaml")).model.base
    jobs = {"self_augment": self_augment_job, "rate": rate_job, "rate_probe": rate_probe_job}
    print(f"# bench_vllm: {cpu_model()}, n={args.n}, loadavg at start {loadavg()}", flush=True)
    rows, dumped = [], {}
    for name in args.jobs.split(","):
        job = jobs[name](args.n)
        t = time.perf_counter()
        for dtype in ("float32", "bfloat16"):  # once per model (cached): not part of a job's time
            merged_model_dir(base, job["adapter"], dtype)
        print(f"{job['name']}: merged model ready in {time.perf_counter() - t:.1f}s", flush=True)
        configs = [("native", "float32", None), ("vllm", "float32", True), ("native", "bfloat16", None),
                   ("vllm", "bfloat16", True)]
        if not args.no_compiled:
            configs.append(("vllm", "bfloat16", False))
        outs = {}
        for engine, dtype, eager in configs:
            load0 = loadavg()
            if engine == "native":
                out, startup, compute = run_native(job, base, dtype)
                label = "native"
            else:
                out, startup, compute = run_vllm(job, base, dtype, eager)
                label = "vLLM eager" if eager else "vLLM compiled"
            outs[(label, dtype)] = out
            ref = outs.get(("native", dtype))
            agree = "(reference)" if engine == "native" else agreement(name, out, ref)
            if dtype == "bfloat16":  # bf16 against fp32: how far each engine's rounding moves the result
                agree += f"; vs native fp32: {agreement(name, out, outs[('native', 'float32')])}"
                agree = agree.removeprefix("(reference); ")
            row = (job["name"], label, dtype, startup, compute, startup + compute, agree, f"{load0} -> {loadavg()}")
            rows.append(row)
            print(f"{row[0]} | {label} {dtype}: start-up {startup:.1f}s, compute {compute:.1f}s, "
                  f"whole {startup + compute:.1f}s; {agree}; load {row[7]}", flush=True)
        dumped[name] = {f"{label} {dtype}": out for (label, dtype), out in outs.items()}
        if args.out:
            import json

            with open(args.out, "w") as f:
                json.dump(dumped, f, indent=1)
    print()
    print("| job | engine | dtype | start-up s | compute s | whole job s | agreement with native (same dtype) | loadavg before -> after |")
    print("|---|---|---|---:|---:|---:|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.1f} | {r[4]:.1f} | {r[5]:.1f} | {r[6]} | {r[7]} |")


if __name__ == "__main__":
    main()
