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
    if not good or not bad:
        return float("nan")  # nothing to compare: the rater gave no readable score on one side
    wins = sum((g > b) + 0.5 * (g == b) for g in good for b in bad)
    return wins / (len(good) * len(bad))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--rater", default=CurationParams().rater)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--modes", default="expected,generate")
    ap.add_argument("--dump", help="write every rated pair to this JSON file")
    args = ap.parse_args()

    report = formats.ParseReport()
    pairs = formats.parse_lima(formats.read_jsonl("data/raw/lima.jsonl"), report)
    pairs = formats.shuffled(pairs, args.seed)[: args.n]
    good = [{"id": p["id"], "instruction": p["instruction"], "response": p["response"]} for p in pairs]
    bad = [{"id": p["id"] + "-swap", "instruction": pairs[(i + 1) % len(pairs)]["instruction"],
            "response": p["response"]} for i, p in enumerate(pairs)]

    tok = models.load_tokenizer(args.rater)
    model = models.load_model(args.rater)
    print(f"rater: {args.rater}; {len(good)} good and {len(bad)} bad pairs from data/raw/lima.jsonl (seed {args.seed})\n")
    print("| scoring | AUC good vs bad | parsed (good) | parsed (bad) | mean good | mean bad | min | max | seconds |")
    print("|---|---|---|---|---|---|---|---|---|", flush=True)
    dump = []
    for mode in args.modes.split(","):
        engine = Engine(model, tok, models.fingerprint(args.rater), 8, add_special_tokens=not tok.chat_template)
        start = time.perf_counter()
        rated = curation.rate(engine, good + bad, mode)
        seconds = time.perf_counter() - start
        g, b = [r["score"] for r in rated[: len(good)]], [r["score"] for r in rated[len(good):]]
        scored = [s for s in g + b if s is not None]

        def mean(xs):
            xs = [x for x in xs if x is not None]
            return sum(xs) / len(xs) if xs else float("nan")

        print(f"| {mode} | {auc(g, b):.3f} | {sum(x is not None for x in g) / len(g):.0%} | "
              f"{sum(x is not None for x in b) / len(b):.0%} | {mean(g):.2f} | {mean(b):.2f} | "
              f"{min(scored, default=None)} | {max(scored, default=None)} | {seconds:.0f} |", flush=True)
        dump += [{**r, "mode": mode, "good": i < len(good)} for i, r in enumerate(rated)]
    if args.dump:
        formats.write_json(args.dump, dump)


if __name__ == "__main__":
    main()
