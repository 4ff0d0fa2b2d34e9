"""Which self-curation scoring mode separates good pairs from bad ones on our corpus?

Good pairs: LIMA-format records with their own instruction. Bad pairs: the same responses under
another record's instruction (off-topic, a 1 on the rubric). Separation is the AUC: the chance
that a random good pair outscores a random bad one (ties count half). 0.5 is chance.

    python benchmarks/rater_modes.py --n 40
"""

import argparse
import time

from humpback import curation, formats, models
from humpback.config import CurationParams
from humpback.generation import Engine


def auc(good, bad):
    good, bad = [g for g in good if g is not None], [b for b in bad if b is not None]
    wins = sum((g > b) + 0.5 * (g == b) for g in good for b in bad)
    return wins / max(len(good) * len(bad), 1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--rater", default=CurationParams().rater)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    report = formats.ParseReport()
    pairs = formats.parse_lima(formats.read_jsonl("data/raw/lima.jsonl"), report)
    pairs = formats.shuffled(pairs, args.seed)[: args.n]
    good = [{"id": p["id"], "instruction": p["instruction"], "response": p["response"]} for p in pairs]
    bad = [{"id": p["id"] + "-swap", "instruction": pairs[(i + 1) % len(pairs)]["instruction"],
            "response": p["response"]} for i, p in enumerate(pairs)]

    tok = models.load_tokenizer(args.rater)
    model = models.load_model(args.rater)
    rows = []
    for mode in ("expected", "generate"):
        engine = Engine(model, tok, models.fingerprint(args.rater), 8, add_special_tokens=not tok.chat_template)
        start = time.perf_counter()
        rated = curation.rate(engine, good + bad, mode)
        seconds = time.perf_counter() - start
        g, b = [r["score"] for r in rated[: len(good)]], [r["score"] for r in rated[len(good):]]
        scored = [s for s in g + b if s is not None]
        rows.append((mode, auc(g, b), sum(x is not None for x in g) / len(g), sum(x is not None for x in b) / len(b),
                     sum(x for x in g if x is not None) / max(1, sum(x is not None for x in g)),
                     sum(x for x in b if x is not None) / max(1, sum(x is not None for x in b)),
                     min(scored, default=None), max(scored, default=None), seconds))
    print(f"rater: {args.rater}; {len(good)} good and {len(bad)} bad pairs from data/raw/lima.jsonl (seed {args.seed})\n")
    print("| scoring | AUC good vs bad | parsed (good) | parsed (bad) | mean good | mean bad | min | max | seconds |")
    print("|---|---|---|---|---|---|---|---|---|")
    for mode, a, pg, pb, mg, mb, lo, hi, s in rows:
        print(f"| {mode} | {a:.3f} | {pg:.0%} | {pb:.0%} | {mg:.2f} | {mb:.2f} | {lo} | {hi} | {s:.0f} |")


if __name__ == "__main__":
    main()
