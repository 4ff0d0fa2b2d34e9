"""The candidates table: each way of writing instructions (backward model x decoding, as tagged in
data/rater_check/backtranslated.jsonl) by its hand-labelled fit rate, on all 64 responses and on the test
part, with 95% bootstrap intervals over responses, and paired differences from a reference candidate:

    python benchmarks/backtranslation_fit.py [--reference bf16/greedy]
"""

from __future__ import annotations

import argparse

from humpback.curation.backtranslated import load_backtranslated
from humpback.evaluation.bootstrap import interval

LABELLED = "data/rater_check/backtranslated.jsonl"
RESAMPLES, SEED = 2000, 0


def ci(x: float, lo_hi: dict, sign: str = "") -> str:
    return f"{x:{sign}.3f} [{lo_hi['lo']:{sign}.3f}, {lo_hi['hi']:{sign}.3f}]"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", default="bf16/greedy", help="backward/decoding to compare with")
    args = ap.parse_args()
    pairs = load_backtranslated(LABELLED)
    by = {}
    for p in pairs:
        by.setdefault(f"{p['backward']}/{p['decoding']}", {})[p["response_id"]] = p
    ref = by[args.reference]
    print(f"{LABELLED}: {len(pairs)} labelled pairs; reference {args.reference}\n")
    print("| candidate | responses | fit (all) | rated 4-5 | fit (test part) | minus reference, paired (all) |")
    print("|---|---:|---|---:|---|---|")
    for name, rows in by.items():
        ids = sorted(rows)
        fit = [float(rows[r]["fits"]) for r in ids]
        test = [float(rows[r]["fits"]) for r in ids if rows[r]["split"] == "test"]
        shared = [r for r in ids if r in ref]
        delta = ""
        if name != args.reference and shared:
            a, b = [float(ref[r]["fits"]) for r in shared], [float(rows[r]["fits"]) for r in shared]
            delta = ci(sum(b) / len(b) - sum(a) / len(a),
                       interval(lambda x, y: y.mean() - x.mean(), [a, b], RESAMPLES, SEED), "+")
        print(f"| {name} | {len(ids)} | {ci(sum(fit) / len(fit), interval(lambda x: x.mean(), [fit], RESAMPLES, SEED))}"
              f" | {sum(rows[r]['rating'] >= 4 for r in ids)} | "
              f"{ci(sum(test) / len(test), interval(lambda x: x.mean(), [test], RESAMPLES, SEED))} | {delta} |")


if __name__ == "__main__":
    main()
