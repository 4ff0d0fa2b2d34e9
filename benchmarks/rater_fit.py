"""What the probe should be fit on: the constructed rater set's dev part alone (as before), or with the
hand-labelled backtranslated pairs' dev part (data/rater_check/backtranslated.jsonl); whether a fit
head (a logistic regression of `fits` on all of the rater's features) should replace the relevance-only
gate; and how its level distribution becomes the integer rating: the most likely level (as before), or
cut points on the expected score fit on the backtranslated dev part (probe.fit_cuts, from out-of-fold
scores). Every variant is fit on dev parts only, its L2 chosen by grouped cross-validation there (folds
hold out whole instructions and whole responses), and measured on both test parts as rater_check
measures them, with 95% intervals over the backtranslated test responses (bootstrap, paired against the
first variant):

    python benchmarks/rater_fit.py [--resamples 1000]

The features are the rater's (M0's) as `rate` computes them, in the result cache once computed.
"""

from __future__ import annotations

import argparse
import os
import random
from math import nan
from collections import defaultdict

import torch

from humpback import recipe
from humpback.config import load_params
from humpback.curation.backtranslated import load_backtranslated
from humpback.curation.check import (backtranslated_metrics, load_rater_check, rater_check_items, rater_check_metrics,
                                     rating_metrics)
from humpback.curation.probe import (_head_inputs, _minimize, expected, fit_cuts, fit_head, fit_probe, gated_probs,
                                     head_probs, on_topic, rating)
from humpback.curation.rater import probe_items, rater_features
from humpback.engine import open_engine
from humpback.stage import cpu_model

L2_GRID = (10.0, 30.0, 100.0, 300.0, 1000.0)
VARIANTS = {  # name: (dev parts the head and gate fit on, gate, integer rating)
    "constructed dev, relevance gate, most likely level (before)": (("constructed",), "relevance", "argmax"),
    "both dev parts, relevance gate, most likely level": (("constructed", "backtranslated"), "relevance", "argmax"),
    "both dev parts, relevance gate, cut points": (("constructed", "backtranslated"), "relevance", "cuts"),
    "both dev parts, relevance gate, cut points in sample": (("constructed", "backtranslated"), "relevance", "in-sample"),
    "both dev parts, fit head, most likely level": (("constructed", "backtranslated"), "fit", "argmax"),
    "both dev parts, fit head, cut points": (("constructed", "backtranslated"), "fit", "cuts"),
}


def fit_fits(items, feats, l2, steps=500):
    """A fit head: P(the instruction fits) from all of the rater's features, a binary logistic regression of
    `on_topic` (L2, standardized inputs, classes balanced). Measured here; not in the pipeline."""
    rows = [(f, on) for it, f in zip(items, feats) if (on := on_topic(it)) is not None]
    x = _head_inputs([f for f, _ in rows])
    y = torch.tensor([float(on) for _, on in rows])
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    weight = torch.where(y > 0, (len(y) - y.sum()) / y.sum().clamp(min=1), 1.0)
    w, b = _minimize(lambda w, b: torch.nn.functional.binary_cross_entropy_with_logits(
        ((x - mean) / std) @ w + b, y, weight=weight) + l2 * (w ** 2).sum() / len(y),
        torch.zeros(x.shape[1]), torch.zeros(1), steps=steps)
    return {"fit_mean": mean, "fit_std": std, "fit_weight": w, "fit_bias": b}


def probs_of(tensors, feats):
    """The level distribution, the chance of not fitting moved to level 1 (by the fit head where fit)."""
    if "fit_weight" not in tensors:
        return gated_probs(tensors, feats)
    z = (_head_inputs(feats) - tensors["fit_mean"]) / tensors["fit_std"]
    on = torch.sigmoid(z @ tensors["fit_weight"] + tensors["fit_bias"])[:, None]
    return on * head_probs(tensors, feats) + (1 - on) * torch.nn.functional.one_hot(
        torch.zeros(len(feats), dtype=torch.long), 5)


def group(it: dict) -> str:
    return it.get("response_id") or it["instruction_id"]


def fit(items, feats, l2, gate):
    """The pipeline's probe (head and relevance gate), or the head with the fit head instead of the gate."""
    if gate == "fit":
        return {**fit_head(items, feats, l2=l2), **fit_fits(items, feats, l2=l2)}
    return fit_probe(items, feats, l2)


def cv_loss(items, feats, l2, gate, folds=4):
    """Held-out log-loss of the gated level distribution, by grouped folds."""
    groups = sorted({group(it) for it in items})
    total = 0.0
    for k in range(folds):
        held = set(groups[k::folds])
        tr = [i for i, it in enumerate(items) if group(it) not in held]
        te = [i for i, it in enumerate(items) if group(it) in held]
        t = fit([items[i] for i in tr], [feats[i] for i in tr], l2, gate)
        p = probs_of(t, [feats[i] for i in te]).clamp(min=1e-6)
        y = torch.tensor([1 if items[i]["offtopic"] else items[i]["level"] for i in te]) - 1
        total += -p.log()[torch.arange(len(te)), y].sum().item()
    return total / len(items)


def out_of_fold(items, feats, l2, gate, scored, folds=4):
    """Expected scores of items[scored], each from a fit without its own response's items."""
    groups, out = sorted({items[i]["response_id"] for i in scored}), {}
    for k in range(folds):
        held = set(groups[k::folds])
        tr = [i for i, it in enumerate(items) if it.get("response_id") not in held]
        te = [i for i in scored if items[i]["response_id"] in held]
        t = fit([items[i] for i in tr], [feats[i] for i in tr], l2, gate)
        out.update(zip(te, expected(probs_of(t, [feats[i] for i in te])).tolist()))
    return [out[i] for i in scored]


def rated(tensors, probs) -> list[dict]:
    return [{"score": s, "score_expected": float(e)} for s, e in zip(rating(tensors, probs), expected(probs))]


def bootstrap(bt, scores_a, scores_b, metric, resamples, seed=0):
    """95% interval of metric(b) and of metric(b) - metric(a), resampling backtranslated test responses."""
    by = defaultdict(list)
    for i, p in enumerate(bt):
        by[p["response_id"]].append(i)
    ids, rng, got, diff = sorted(by), random.Random(seed), [], []
    for _ in range(resamples):
        idx = [i for r in rng.choices(ids, k=len(ids)) for i in by[r]]
        pairs = [bt[i] for i in idx]
        mb = metric(pairs, [scores_b[i] for i in idx])
        ma = metric(pairs, [scores_a[i] for i in idx])
        if mb is not None and ma is not None:
            got.append(mb)
            diff.append(mb - ma)
    q = lambda xs: (sorted(xs)[int(0.025 * len(xs))], sorted(xs)[int(0.975 * len(xs)) - 1]) if xs else (nan, nan)
    return q(got), q(diff)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resamples", type=int, default=1000)
    args = ap.parse_args()
    params = load_params()
    c = params.curation
    ref, adapter = recipe.rater_model(params)
    engine = open_engine(ref, params.model, c.batch_size, adapter=adapter, chat=True, engine=params.launch.engine)
    constructed = load_rater_check(c.check_pairs)
    bt_pairs = load_backtranslated(c.check_backtranslated)
    rows = {}
    for part in ("dev", "test"):
        rows["constructed", part] = rater_check_items(constructed, part)
        rows["backtranslated", part] = probe_items([p for p in bt_pairs if p["split"] == part])
    feats = {k: rater_features(engine, v, c.relevance_tokens) for k, v in rows.items()}
    bt_test = [p for p in bt_pairs if p["split"] == "test"]  # as labelled: `rating`, `fits`
    print(f"rater {c.rater} ({engine.dtype}), CPU {cpu_model()} x{os.cpu_count()}; "
          f"dev: {len(rows['constructed', 'dev'])} constructed + {len(rows['backtranslated', 'dev'])} backtranslated "
          f"items; test: {len(rows['constructed', 'test'])} + {len(bt_test)}\n")

    results = {}
    cv = {}
    for name, (parts, gate, rule) in VARIANTS.items():
        items = [it for p in parts for it in rows[p, "dev"]]
        fs = [f for p in parts for f in feats[p, "dev"]]
        if (parts, gate) not in cv:
            cv[parts, gate] = {l2: cv_loss(items, fs, l2, gate) for l2 in L2_GRID}
        losses = cv[parts, gate]
        l2 = min(losses, key=losses.get)
        t = fit(items, fs, l2, gate)
        if rule == "cuts":
            real = list(range(len(items) - len(rows["backtranslated", "dev"]), len(items)))
            t["cuts"] = fit_cuts(out_of_fold(items, fs, l2, gate, real), [items[i]["level"] for i in real])
        if rule == "in-sample":  # the final fit's own scores of the backtranslated dev pairs
            real = list(range(len(items) - len(rows["backtranslated", "dev"]), len(items)))
            t["cuts"] = fit_cuts(expected(probs_of(t, [fs[i] for i in real])).tolist(), [items[i]["level"] for i in real])
        con_items = rows["constructed", "test"]
        con = rated(t, probs_of(t, feats["constructed", "test"]))
        bt = rated(t, probs_of(t, feats["backtranslated", "test"]))
        cm = {**rater_check_metrics(con_items, [r["score_expected"] for r in con]), **rating_metrics(con_items, con)}
        cm["precision_at_5"] = rating_metrics(con_items, con, 5)["precision_at_5"]
        results[name] = (bt, cm, backtranslated_metrics(bt_test, bt), l2, losses)

    print("| variant | L2 (CV) | constructed test: spearman / precision at 4 / at 5 / AUC off-topic "
          "| backtranslated test: spearman | AUC for fit | kept at 4 | precision at 4 | recall at 4 | kept at 5 | precision at 5 |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, (bt, cm, bm, l2, _) in results.items():
        print(f"| {name} | {l2:g} | {cm['spearman']:.3f} / {cm['precision_at_4']} / {cm['precision_at_5']} / "
              f"{cm['auc_offtopic']:.3f} | {bm['spearman']:.3f} | {bm['auc_fit']:.3f} | {bm['kept_at_4']} | "
              f"{bm['precision_at_4']} | {bm['recall_at_4']} | {bm['kept_at_5']} | {bm['precision_at_5']} |")

    from humpback.curation.check import auc

    def auc_fit(pairs, rs):
        return auc([r["score_expected"] for r, p in zip(rs, pairs) if p["fits"]],
                   [r["score_expected"] for r, p in zip(rs, pairs) if not p["fits"]])

    def prec4(pairs, rs):
        kept = [p["rating"] >= 4 for r, p in zip(rs, pairs) if r["score"] >= 4]
        return sum(kept) / len(kept) if kept else None

    print("\nPrecision for 4-5 of the N backtranslated test pairs with the highest expected score "
          "(recall in brackets), and the expected score there:")
    good = [p["rating"] >= 4 for p in bt_test]
    for name, (bt, *_rest) in results.items():
        order = sorted(range(len(bt)), key=lambda i: -bt[i]["score_expected"])
        cells = []
        for n in (5, 10, 19, 38, 60, 100):
            hits = sum(good[i] for i in order[:n])
            cells.append(f"top {n}: {hits / n:.2f} ({hits / sum(good):.2f}) at {bt[order[n - 1]]['score_expected']:.2f}")
        print(f"  {name}: " + "; ".join(cells))

    first = next(iter(results.values()))[0]
    print(f"\nIntervals over the {len({p['response_id'] for p in bt_test})} backtranslated test responses "
          f"({args.resamples} resamples); minus the first variant, paired:")
    for name, (bt, *_rest) in results.items():
        for label, metric in (("AUC for fit", auc_fit), ("precision at 4", prec4)):
            (lo, hi), (dlo, dhi) = bootstrap(bt_test, first, bt, metric, args.resamples)
            print(f"  {name}: {label} [{lo:.3f}, {hi:.3f}], minus the first [{dlo:+.3f}, {dhi:+.3f}]")
    print("\nCV log-loss by L2: " + "; ".join(
        f"{name}: " + ", ".join(f"{l2:g} {v:.3f}" for l2, v in r[4].items()) for name, r in results.items()))


if __name__ == "__main__":
    main()
