"""Engine generation (self_augment's job) and rating prefill in fp32 vs bf16 weights, interleaved in one run.

Both models are loaded once; the dtypes take turns over rounds of prompts (order alternated), with a
matmul benchmark of the model's shapes between rounds, so that load from other jobs falls on both alike.
Reports tokens/s, the ratio, achieved GFLOP/s against the measured peak of each dtype, and how many greedy
outputs (instructions) bf16 leaves unchanged.

FLOPs (useful work only): 2 * N_body per prompt or generated token fed through the model (prefix once per
batch call), 2 * N_head per position whose logits are used, attention 4 * layers * hidden per (query, key).

    PYTHONPATH=. python benchmarks/bench_engine_dtype.py --n 64 --batch-size 32
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

ap = argparse.ArgumentParser()
ap.add_argument("--n", type=int, default=64)
ap.add_argument("--batch-size", type=int, default=32)
ap.add_argument("--round", type=int, default=32)
ap.add_argument("--max-new-tokens", type=int, default=48)
ap.add_argument("--rate-n", type=int, default=16, help="pairs for the rating (next_token_probs) part; 0 skips it")
ARGS = ap.parse_args()
os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402

from humpback import formats, models, prompts  # noqa: E402

from humpback.curation.probe import expected
from humpback.curation.rater import Rater
from humpback.config import ModelParams  # noqa: E402
from humpback.engine import Decoding, Engine  # noqa: E402



from machine import cpu_model, matmul_peak  # noqa: E402





def main():
    ref = ModelParams().base
    tok = models.load_tokenizer(ref)
    eng = {}
    for dt in ("float32", "bfloat16"):
        model = models.load_model(ref, dtype=dt)
        eng[dt] = Engine(model, tok, f"bench-{dt}", ARGS.batch_size, cache=None)
    config = eng["float32"].model.config
    n_head = config.vocab_size * config.hidden_size
    n_body = sum(p.numel() for n, p in eng["float32"].model.named_parameters() if "embed" not in n and p.dim() == 2)
    lima = formats.load_json("data/lima_single_turn.json") if os.path.exists("data/lima_single_turn.json") else None
    if lima is None:
        pairs = formats.parse_lima(formats.read_jsonl("data/raw/lima.jsonl"), formats.ParseReport())
        lima = pairs
    records = lima[: ARGS.n]
    suffixes = [prompts.backward_suffix(r["response"], tok, 160) for r in records]
    prefix = prompts.BACKWARD_PREFIX
    dec = Decoding(max_new_tokens=ARGS.max_new_tokens)
    times = {dt: 0.0 for dt in eng}
    outs = {dt: [] for dt in eng}
    flops = {dt: 0.0 for dt in eng}
    peaks = {"float32": [], "bfloat16": []}
    loads = [os.getloadavg()[0]]
    before = os.getloadavg()

    def peak():
        for dt in (torch.float32, torch.bfloat16):
            peaks[str(dt).split(".")[1]].append(matmul_peak(config, dt, tokens=ARGS.batch_size * 64))

    peak()
    pre = len(tok(prefix)["input_ids"])
    for k, i in enumerate(range(0, len(suffixes), ARGS.round)):
        chunk = suffixes[i : i + ARGS.round]
        for dt in (list(eng) if k % 2 == 0 else list(eng)[::-1]):
            e = eng[dt]
            g0 = e.stats["generated_tokens"]
            t = time.perf_counter()
            res = e.generate(prefix, chunk, dec)
            times[dt] += time.perf_counter() - t
            outs[dt] += res
            # useful FLOPs of this round
            f = 0.0
            f += 2 * n_body * pre * ((len(chunk) + ARGS.batch_size - 1) // ARGS.batch_size)
            for s, o in zip(chunk, res):
                p = len(tok(s, add_special_tokens=False)["input_ids"])
                g = len(tok(o, add_special_tokens=False)["input_ids"]) + 1
                f += 2 * n_body * (p + g) + 2 * n_head * g
                f += 4 * config.num_hidden_layers * config.hidden_size * sum(pre + j for j in range(p + g))
            flops[dt] += f
            del g0
            loads.append(os.getloadavg()[0])
        peak()
    after = os.getloadavg()
    best = {k: max(v) for k, v in peaks.items()}
    print(f"CPU: {cpu_model()}; torch {torch.__version__}, {torch.get_num_threads()} threads. Load before "
          f"{before[0]:.2f} {before[1]:.2f} {before[2]:.2f}, after {after[0]:.2f} {after[1]:.2f} {after[2]:.2f}, during "
          f"{min(loads):.2f}-{max(loads):.2f}. Matmul peak (model shapes, {ARGS.batch_size * 64} rows): fp32 best "
          f"{best['float32']:.0f} (median {statistics.median(peaks['float32']):.0f}), bf16 best {best['bfloat16']:.0f} "
          f"(median {statistics.median(peaks['bfloat16']):.0f}) GFLOP/s.")
    print()
    print(f"Generation: {len(suffixes)} prompts, batch {ARGS.batch_size}, greedy, max_new_tokens {ARGS.max_new_tokens}.")
    print()
    print("| dtype | wall s | generated tok/s | vs fp32 | useful GFLOP/s | % of peak of dtype | outputs equal to fp32 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    same = sum(a == b for a, b in zip(outs["float32"], outs["bfloat16"]))
    for dt in eng:
        gen = eng[dt].stats["generated_tokens"]
        rate = flops[dt] / times[dt] / 1e9
        print(f"| {dt} | {times[dt]:.1f} | {gen / times[dt]:.1f} | {times['float32'] / times[dt]:.2f}x | {rate:.0f} | "
              f"{100 * rate / best[dt]:.0f}% | {same if dt == 'bfloat16' else len(suffixes)}/{len(suffixes)} |")
    if ARGS.rate_n:
        pairs = [{"instruction": o, "response": r["response"]} for o, r in zip(outs["float32"], records)][: ARGS.rate_n]
        res, rt = {}, {}
        for dt in list(eng) + list(eng)[::-1]:
            e = Engine(eng[dt].model, tok, f"bench-{dt}", 8, cache=None, add_special_tokens=not tok.chat_template)
            t = time.perf_counter()
            probs, _ = Rater("expected").probabilities(e, pairs)
            res[dt] = expected(probs).tolist()
            rt[dt] = rt.get(dt, 0.0) + time.perf_counter() - t
        diff = max(abs(a - b) for a, b in zip(res["float32"], res["bfloat16"]))
        print()
        print(f"Rating (expected, {len(pairs)} pairs, batch 8, each dtype twice, alternated): fp32 {rt['float32']:.1f} s, "
              f"bf16 {rt['bfloat16']:.1f} s ({rt['float32'] / rt['bfloat16']:.2f}x); largest |expected score "
              f"difference| {diff:.3f}; load now {os.getloadavg()[0]:.2f}.")


if __name__ == "__main__":
    main()
