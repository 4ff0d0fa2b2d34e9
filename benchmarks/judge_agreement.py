"""How far the rater judge agrees with blind hand labels on the default run's own answer pairs.

1. `python benchmarks/judge_agreement.py blind --out /tmp/blind.jsonl --key /tmp/key.json`
   writes each judged item with its two answers as A and B in a seeded random order, without the
   judge's scores or verdict, and the key elsewhere; label each line's `label` as A, B or tie.
2. `python benchmarks/judge_agreement.py unblind --labelled /tmp/blind.jsonl --key /tmp/key.json`
   writes data/eval/judge_labels.jsonl (instruction, both answers, the preferred model: base, final, tie).
3. `python benchmarks/judge_agreement.py` compares the labels with data/eval_samples.json's verdicts:
   agreement, Cohen's kappa and the hand-labelled win rate, with 95% bootstrap intervals.
"""

import argparse
import json
import random
import sys

import numpy as np

from humpback import formats, paths
from humpback.evaluation.bootstrap import interval

LABELS = "data/eval/judge_labels.jsonl"
FLIP = {"A": "B", "B": "A", "tie": "tie"}


def blind(a):
    samples = formats.load_json(paths.EVAL_SAMPLES)
    rng, out, key = random.Random(0), [], []
    for i, s in enumerate(samples):
        final_is_a = rng.random() < 0.5
        first, second = (s["final"], s["base"]) if final_is_a else (s["base"], s["final"])
        out.append({"item": i, "instruction": s["instruction"], "A": first, "B": second, "label": None})
        key.append("final" if final_is_a else "base")
    with open(a.out, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in out)
    with open(a.key, "w", encoding="utf-8") as f:
        json.dump(key, f)
    print(f"{a.out}: {len(out)} items to label (A, B or tie); key in {a.key}")


def unblind(a):
    key, samples = json.load(open(a.key, encoding="utf-8")), formats.load_json(paths.EVAL_SAMPLES)
    rows = []
    for where, r in formats.read_jsonl(a.labelled):
        if r["label"] not in FLIP:
            sys.exit(f"{where}: label must be A, B or tie, not {r['label']!r}")
        a_is = key[r["item"]]
        b_is = "base" if a_is == "final" else "final"
        s = samples[r["item"]]
        rows.append({"instruction": s["instruction"], "base": s["base"], "final": s["final"],
                     "preferred": {"A": a_is, "B": b_is, "tie": "tie"}[r["label"]], "note": r.get("note", "")})
    with open(LABELS, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    print(f"{LABELS}: {len(rows)} labelled pairs")


def compare(a):
    labels = [r for _, r in formats.read_jsonl(LABELS)]
    verdicts = {(s["instruction"], s["base"], s["final"]): s["verdict"] for s in formats.load_json(paths.EVAL_SAMPLES)}
    as_verdict = {"final": "win", "base": "loss", "tie": "tie"}
    pairs = [(as_verdict[r["preferred"]], verdicts[(r["instruction"], r["base"], r["final"])])
             for r in labels if (r["instruction"], r["base"], r["final"]) in verdicts]
    if len(pairs) < len(labels):
        print(f"{len(labels) - len(pairs)} labelled pairs are not in {paths.EVAL_SAMPLES} (another run's answers)")
    hand, judge = map(np.array, zip(*pairs))
    classes = ["win", "tie", "loss"]

    def kappa(h, j):
        po = (h == j).mean()
        pe = sum((h == c).mean() * (j == c).mean() for c in classes)
        return (po - pe) / (1 - pe) if pe < 1 else 0.0

    idx = np.arange(len(pairs))
    agree = interval(lambda i: (hand[i.astype(int)] == judge[i.astype(int)]).mean(), [idx], 2000, 0)
    k = interval(lambda i: kappa(hand[i.astype(int)], judge[i.astype(int)]), [idx], 2000, 0)
    print(f"| pairs | hand: final / tie / base | judge: win / tie / loss | agreement | Cohen's kappa |")
    print("|---:|---|---|---|---|")
    h = [int((hand == c).sum()) for c in classes]
    j = [int((judge == c).sum()) for c in classes]
    print(f"| {len(pairs)} | {h[0]} / {h[1]} / {h[2]} | {j[0]} / {j[1]} / {j[2]} | "
          f"{(hand == judge).mean():.3f} [{agree['lo']:.3f}, {agree['hi']:.3f}] | {kappa(hand, judge):.3f} [{k['lo']:.3f}, {k['hi']:.3f}] |")
    win = interval(lambda i: (hand[i.astype(int)] == "win").mean() - (hand[i.astype(int)] == "loss").mean(), [idx], 2000, 0)
    print(f"\nhand-labelled final-minus-base preference: {(hand == 'win').mean() - (hand == 'loss').mean():+.3f} "
          f"[{win['lo']:+.3f}, {win['hi']:+.3f}]")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd")
    b = sub.add_parser("blind")
    b.add_argument("--out", required=True)
    b.add_argument("--key", required=True)
    u = sub.add_parser("unblind")
    u.add_argument("--labelled", required=True)
    u.add_argument("--key", required=True)
    a = ap.parse_args()
    {"blind": blind, "unblind": unblind, None: compare}[a.cmd](a)


if __name__ == "__main__":
    main()
