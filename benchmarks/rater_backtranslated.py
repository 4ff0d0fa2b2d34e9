"""The fitted rater (models/rater, as rate uses it) on real backtranslated pairs, labelled blind by hand
(data/rater_check/backtranslated.jsonl, docs/labelling.md): spearman with the labelled rating, AUC of
the expected score for `fits`, and the precision and recall of keeping `score >= 4` (and 5) against
pairs labelled 4-5 (and 5) and against pairs that fit. Per part (dev, test) and overall:

    python benchmarks/rater_backtranslated.py [--rater models/rater]
"""

from __future__ import annotations

import argparse

from humpback import paths, recipe
from humpback.config import load_params
from humpback.curation.backtranslated import load_backtranslated
from humpback.curation.check import auc, spearman
from humpback.curation.rater import Rater
from humpback.engine import open_engine

LABELLED = "data/rater_check/backtranslated.jsonl"


def share(num: int, den: int) -> str:
    return f"{num / den:.3f} ({num}/{den})" if den else "n/a (0 kept)"


def measure(pairs: list[dict], rated: list[dict]) -> dict:
    expected = [r["score_expected"] for r in rated]
    good4 = [p["rating"] >= 4 for p in pairs]
    out = {"pairs": len(pairs), "fit": sum(p["fits"] for p in pairs),
           "spearman": round(spearman(expected, [p["rating"] for p in pairs]), 3),
           "auc_fit": round(auc([x for x, p in zip(expected, pairs) if p["fits"]],
                                [x for x, p in zip(expected, pairs) if not p["fits"]]), 3)}
    for t in (4, 5):
        kept = [r["score"] >= t for r in rated]
        good = [p["rating"] >= t for p in pairs]
        out[f"kept_at_{t}"] = sum(kept)
        out[f"precision_at_{t}"] = share(sum(k and g for k, g in zip(kept, good)), sum(kept))
        out[f"fit_precision_at_{t}"] = share(sum(k and p["fits"] for k, p in zip(kept, pairs)), sum(kept))
    out["recall_at_4"] = share(sum(r["score"] >= 4 and g for r, g in zip(rated, good4)), sum(good4))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rater", default=paths.RATER)
    args = ap.parse_args()
    params = load_params()
    pairs = load_backtranslated(LABELLED)
    ref, adapter = recipe.rater_model(params)
    engine = open_engine(ref, params.model, params.curation.batch_size, adapter=adapter, chat=True,
                         engine=params.launch.engine)
    rater = Rater.load(args.rater)
    rated = rater.rate(engine, [{"instruction": p["instruction"], "response": p["response"]} for p in pairs])
    print(f"rater: {params.curation.rater}, scoring {rater.scoring}, dtype {engine.dtype}; {LABELLED}")
    for part in ("dev", "test", "all"):
        idx = [i for i, p in enumerate(pairs) if part == "all" or p["split"] == part]
        m = measure([pairs[i] for i in idx], [rated[i] for i in idx])
        print(f"\n{part}: " + "; ".join(f"{k} {v}" for k, v in m.items()))


if __name__ == "__main__":
    main()
