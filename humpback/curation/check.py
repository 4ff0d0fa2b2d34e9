"""The rater check: labelled sets that measure the rater every run, constructed (instruction, response,
rubric level) and real backtranslated pairs (backtranslated.py). Their dev parts fit the scoring mode,
their test parts measure it."""

from __future__ import annotations

from .. import HumpbackError, formats

RATER_CHECK_FIELDS = ("id", "instruction_id", "instruction", "response", "level", "split")


def load_rater_check(path: str) -> list[dict]:
    """The labelled pairs; a record without the fields or with a level outside 1-5 is one clear error."""
    pairs = []
    for where, rec in formats.read_jsonl(path):
        if not isinstance(rec, dict):
            raise HumpbackError(f"{where}: expected a JSON object, got {formats.json_type(rec)}")
        missing = [f for f in RATER_CHECK_FIELDS if f not in rec]
        if missing:
            raise HumpbackError(f"{where}: missing field(s) {', '.join(missing)}")
        if rec["level"] not in (1, 2, 3, 4, 5) or rec["split"] not in ("dev", "test"):
            raise HumpbackError(f"{where}: level must be 1-5 and split dev or test, got {rec['level']!r}, {rec['split']!r}")
        pairs.append(rec)
    return pairs


def rater_check_items(pairs: list[dict], part: str) -> list[dict]:
    """The pairs of one part, plus off-topic pairs: each level-5 response under the next instruction
    of the same part (a swap that keeps a good answer but makes it answer the wrong question)."""
    items = [{**p, "offtopic": False} for p in pairs if p["split"] == part]
    best = sorted((p for p in items if p["level"] == 5), key=lambda p: p["instruction_id"])
    for i, p in enumerate(best):
        other = best[(i + 1) % len(best)]
        items.append({**p, "id": f"{p['id']}-offtopic", "instruction": other["instruction"], "offtopic": True})
    return items


def spearman(xs: list[float], ys: list[float]) -> float:
    """Rank correlation (ties share their mean rank); 0 when either side is constant."""
    import pandas as pd  # slow to import: only the stages that measure the rater need it

    rho = pd.DataFrame({"x": xs, "y": ys}).corr(method="spearman").loc["x", "y"]
    return 0.0 if pd.isna(rho) else float(rho)


def auc(pos: list[float], neg: list[float]) -> float:
    """The chance that a random positive outscores a random negative (ties count half)."""
    if not pos or not neg:
        return float("nan")
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def rater_check_metrics(items: list[dict], scores: list[float | None]) -> dict:
    """spearman (score vs level), auc_high_vs_low (levels 4-5 vs 1-2), auc_offtopic (level-5 pairs vs the
    same responses under another instruction), mean_by_level. Unscored pairs count as the lowest score."""
    s = [1.0 if x is None else float(x) for x in scores]
    on = [(it, x) for it, x in zip(items, s) if not it["offtopic"]]
    level = {lv: [x for it, x in on if it["level"] == lv] for lv in range(1, 6)}
    return {
        "pairs": len(on),
        "offtopic_pairs": len(items) - len(on),
        "unscored": sum(x is None for x in scores),
        "spearman": round(spearman([x for _, x in on], [it["level"] for it, _ in on]), 3),
        "auc_high_vs_low": round(auc(level[4] + level[5], level[1] + level[2]), 3),
        "auc_offtopic": round(auc(level[5], [x for it, x in zip(items, s) if it["offtopic"]]), 3),
        "mean_by_level": {str(lv): round(sum(v) / len(v), 2) if v else None for lv, v in level.items()},
    }


def rating_metrics(items: list[dict], rated: list[dict], threshold: int = 4) -> dict:
    """The integer rating against the labels, as the paper measured its rater: exact-level accuracy,
    and the precision and recall of keeping `rating >= threshold` for pairs labelled >= threshold
    (off-topic swaps are labelled 1)."""
    truth = [1 if it["offtopic"] else it["level"] for it in items]
    got = [r["score"] for r in rated]
    keep = [g is not None and g >= threshold for g in got]
    good = [t >= threshold for t in truth]
    tp = sum(k and g for k, g in zip(keep, good))
    return {
        "rating_accuracy": round(sum(g == t for g, t in zip(got, truth)) / len(truth), 3),
        f"precision_at_{threshold}": round(tp / sum(keep), 3) if sum(keep) else None,
        f"recall_at_{threshold}": round(tp / sum(good), 3) if sum(good) else None,
        "rating_histogram": {str(lv): sum(g == lv for g in got) for lv in range(1, 6)},
    }


def backtranslated_metrics(pairs: list[dict], rated: list[dict]) -> dict:
    """The rater on labelled backtranslated pairs: spearman of its expected score with the labelled rating,
    `auc_fit` (the chance that a pair that fits outscores one that does not), and the precision and recall
    of keeping `score >= 4` (and the precision at 5) against the pairs labelled at or above that level.
    A pair without a score counts as rated 1."""
    expected = [1.0 if r["score_expected"] is None else r["score_expected"] for r in rated]
    score = [r["score"] or 1 for r in rated]
    out = {"pairs": len(pairs), "fit": sum(p["fits"] for p in pairs),
           "spearman": round(spearman(expected, [p["rating"] for p in pairs]), 3),
           "auc_fit": round(auc([x for x, p in zip(expected, pairs) if p["fits"]],
                                [x for x, p in zip(expected, pairs) if not p["fits"]]), 3)}
    for t in (4, 5):
        kept = [s >= t for s in score]
        good = [p["rating"] >= t for p in pairs]
        hits = sum(k and g for k, g in zip(kept, good))
        out[f"kept_at_{t}"] = sum(kept)
        out[f"precision_at_{t}"] = round(hits / sum(kept), 3) if sum(kept) else None
        out[f"fit_precision_at_{t}"] = round(sum(k and p["fits"] for k, p in zip(kept, pairs)) / sum(kept), 3) \
            if sum(kept) else None
        if t == 4:
            out["recall_at_4"] = round(hits / sum(good), 3) if sum(good) else None
    return out
