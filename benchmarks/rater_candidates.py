"""Which scoring method separates rubric levels with the rater? Measured on data/rater_check.

Computes, once per pair (kept in the result cache), the rater's digit log-probabilities after
`Score:`, its last hidden state there, and the response's log-likelihood with and without the
instruction. Then compares candidate scorers: tuned (L2 chosen by grouped cross-validation) on the
dev part only, reported on the dev and test parts.

    python benchmarks/rater_candidates.py
"""

import argparse
import time

import torch

from humpback.curation.check import load_rater_check, rater_check_items, rater_check_metrics
from humpback.curation.probe import expected, fit_gate, fit_head, gated_probs, head_probs
from humpback.curation.rater import content_free_logprobs, rater_features
from humpback.config import CurationParams, ModelParams
from humpback.engine import open_engine

L2_GRID = (0.1, 1.0, 10.0, 100.0)


def scores(name, feats, calib, head, gate):
    lp = torch.tensor([f["logprobs"] for f in feats])
    if name == "expected":
        return expected(lp.softmax(-1)).tolist()
    if name == "calibrated":
        return expected((lp - torch.tensor(calib)).softmax(-1)).tolist()
    if name == "relevance":
        return [f["relevance"] for f in feats]
    if name == "head":
        return expected(head_probs(head, feats)).tolist()
    if name == "head_argmax":
        return (head_probs(head, feats).argmax(-1) + 1).tolist()
    if name == "head+gate":
        return expected(gated_probs({**head, **gate}, feats)).tolist()
    if name == "head+gate_argmax":
        return (gated_probs({**head, **gate}, feats).argmax(-1) + 1).tolist()
    raise ValueError(name)


def cv_l2(items, feats, folds=4):
    """Grouped by instruction: each fold holds out whole instructions (and their off-topic swaps)."""
    groups = sorted({it["instruction_id"] for it in items})
    best = None
    for l2 in L2_GRID:
        got = []
        for k in range(folds):
            held = set(groups[k::folds])
            tr = [i for i, it in enumerate(items) if it["instruction_id"] not in held]
            te = [i for i, it in enumerate(items) if it["instruction_id"] in held]
            head = fit_head([items[i] for i in tr], [feats[i] for i in tr], l2=l2)
            s = expected(head_probs(head, [feats[i] for i in te])).tolist()
            got.append(rater_check_metrics([items[i] for i in te], s)["spearman"])
        mean = sum(got) / len(got)
        print(f"  cv l2={l2}: spearman {mean:.3f}")
        if best is None or mean > best[1]:
            best = (l2, mean)
    return best[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rater", default=CurationParams().rater)
    ap.add_argument("--relevance-tokens", type=int, default=96)
    ap.add_argument("--pairs", default="data/rater_check/pairs.jsonl")
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()

    pairs = load_rater_check(args.pairs)
    # the stages' engine: the same cache keys, so a pipeline run and this benchmark share results
    engine = open_engine(args.rater, ModelParams(dtype=args.dtype), 8, chat=True)
    t0 = time.perf_counter()
    rows = {}
    for part in ("dev", "test"):
        items = rater_check_items(pairs, part)
        rows[part] = (items, rater_features(engine, items, args.relevance_tokens))
    calib = content_free_logprobs(engine)
    print(f"features of {sum(len(r[0]) for r in rows.values())} pairs: {time.perf_counter() - t0:.0f} s")
    l2 = cv_l2(*rows["dev"])
    head = fit_head(*rows["dev"], l2=l2)
    gate = {f"gate_{k}": v for k, v in fit_gate(*rows["dev"]).items()}
    import os

    from humpback.stage import cpu_model

    cpu = cpu_model()
    print(f"\nrater {args.rater} ({args.dtype}); head L2 = {l2} (grouped 4-fold CV on dev); "
          f"CPU {cpu} x{os.cpu_count()}, load {os.getloadavg()[0]:.2f}\n")
    print("| candidate | part | spearman | auc_high_vs_low | auc_offtopic | mean score by level 1..5 |")
    print("|---|---|---:|---:|---:|---|")
    for name in ("expected", "calibrated", "relevance", "head", "head_argmax", "head+gate", "head+gate_argmax"):
        for part in ("dev", "test"):
            items, feats = rows[part]
            m = rater_check_metrics(items, scores(name, feats, calib, head, gate))
            print(f"| {name} | {part} | {m['spearman']:.3f} | {m['auc_high_vs_low']:.3f} | {m['auc_offtopic']:.3f} | "
                  f"{' / '.join(str(v) for v in m['mean_by_level'].values())} |")


if __name__ == "__main__":
    main()
