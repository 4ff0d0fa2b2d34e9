"""Self-curation, part 2: which rated pairs are kept. The rule, the score histogram and the metrics
of the `rate` and `curate` stages, on ratings alone: no model, no torch (the report uses them too)."""

from __future__ import annotations

from collections import Counter

from .. import formats

BINS = ("1", "2", "3", "4", "5", "unparsable")  # the histogram's bins, in its order


def score_bin(score) -> str:
    """The histogram bin of a rating: its level, or `unparsable` when the rater wrote no score. A
    fractional score (an expected score in a hand-made file) goes to the nearest level."""
    return "unparsable" if score is None else str(min(5, max(1, int(round(score)))))


def is_kept(score, threshold: float) -> bool:
    """The paper's rule: a pair is kept when its rating is at or above the threshold; a pair with no
    score is never kept."""
    return score is not None and score >= threshold


def score_histogram(rated: list[dict]) -> list[dict]:
    """Counts per rating 1..5 plus an `unparsable` bin."""
    counts = Counter(score_bin(r["score"]) for r in rated)
    return [{"score": b, "count": counts.get(b, 0)} for b in BINS]


def rate_metrics(rated: list[dict]) -> dict:
    scores = [r["score"] for r in rated if r["score"] is not None]
    expected = [r["score_expected"] for r in rated if r.get("score_expected") is not None]
    return {
        "rated": len(rated),
        "scored": len(scores),
        "unparsable": len(rated) - len(scores),
        "mean_score": round(sum(scores) / len(scores), 2) if scores else None,
        "mean_score_expected": round(sum(expected) / len(expected), 2) if expected else None,
        "histogram": {h["score"]: h["count"] for h in score_histogram(rated)},
    }


def curate(rated: list[dict], threshold: float, selection: str = "score", seed: int = 0) -> list[dict]:
    """Keep the pairs rated at or above the threshold; unparsable ones are never kept.

    The other selections keep as many of the scored pairs as the threshold keeps, chosen otherwise: the
    controls that tell what the rater's choice is worth.
    - `random`: a seeded random subset (the paper's Fig. 3);
    - `longest`: the longest responses, in characters (Zhao et al. 2024, "Long Is More for Alignment");
    - `ifd`: the highest instruction-following difficulty among pairs whose instruction helps (IFD < 1;
      Cherry LLM, Superfiltering); each record needs its `ifd` (curation.ifd computes it)."""
    kept = [r for r in rated if is_kept(r["score"], threshold)]
    if selection == "score":
        return kept
    scored = [r for r in rated if r["score"] is not None]
    if selection == "random":
        ranked = formats.shuffled(scored, seed)
    elif selection == "longest":
        ranked = sorted(scored, key=lambda r: -len(r["response"]))
    elif selection == "ifd":
        ranked = sorted((r for r in scored if r["ifd"] is not None and r["ifd"] < 1), key=lambda r: -r["ifd"])
    else:
        raise ValueError(f"unknown selection {selection!r}")
    chosen = set(r["id"] for r in ranked[: len(kept)])
    return [r for r in scored if r["id"] in chosen]  # in rated order, like `score`


def curate_metrics(rated: list[dict], threshold: float, selection: str = "score", seed: int = 0) -> dict:
    kept = curate(rated, threshold, selection, seed)
    return {
        "threshold": threshold,
        "selection": selection,
        "rated": len(rated),
        "kept": len(kept),
        "kept_at": {str(t): len(curate(rated, t)) for t in (3, 4, 5)},
        "kept_mean_score": round(sum(r["score"] for r in kept) / len(kept), 2) if kept else None,
    }
