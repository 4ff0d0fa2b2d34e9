"""The curation report: one self-contained HTML page (inline CSS, SVG and JS; nothing from a network).

It shows the score histogram, kept and dropped counts at several thresholds, the rater check, and
every rated pair in a table that sorts, filters and searches in the browser. The table's state lives
in the URL fragment (`curation.html#score=4&kept=yes&q=python&sort=score-desc`), so a view can be
shared as a link, and tests can open a filtered view directly.

Which pairs are kept, and the histogram's bins, are `humpback.curation.select`'s, the rule the
`curate` stage applies. The markup is in templates/report.html.j2; this module computes what it shows.
The output depends only on its inputs (no timestamps), so its DVC hash changes only when they do.
"""

from __future__ import annotations

import json
import math
import os

from .. import HumpbackError
from ..curation import select
from .render import esc, render as render_template

THRESHOLDS = (3, 4, 5)
BINS = select.BINS
SNIPPET = 110  # characters of a response shown before it is expanded
REASONING = 300  # characters of the rater's reasoning, likewise


def _number(value) -> float | None:
    # bool is an int in Python, never a score
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) else None


def score_of(record: dict) -> float | None:
    """The record's score as a number, or None (missing, unparsable, or not a finite number)."""
    return _number(record.get("score"))


def score_bin(record: dict) -> str:
    return select.score_bin(score_of(record))


def _scores(rated: list[dict]) -> list[dict]:
    """What `curate` reads of each pair: its position as the id, and the score this page shows."""
    return [{"id": i, "score": score_of(r), "response": str(r.get("response", "")), "ifd": r.get("ifd")}
            for i, r in enumerate(rated)]


def kept_flags(rated: list[dict], threshold: float, selection: str = "score", seed: int = 0) -> list[bool]:
    """Per pair, whether `curate` keeps it. By position: a hand-edited file's ids may repeat or be absent
    (the pipeline's are unique, so `curate` keeps the same pairs)."""
    scores = _scores(rated)
    kept = {r["id"] for r in select.curate(scores, threshold, selection, seed)}
    return [i in kept for i in range(len(rated))]


def continuous_score(record: dict) -> float | None:
    """A non-integer score if the record has one: `score_expected`, else a non-integer `score`."""
    for key in ("score_expected", "score"):
        v = _number(record.get(key))
        if v is not None and (key == "score_expected" or v != int(v)):
            return v
    return None


def summarize(rated: list[dict], threshold: float, selection: str = "score", seed: int = 0) -> dict:
    kept = kept_flags(rated, threshold, selection, seed)
    hist = {b: {"kept": 0, "dropped": 0} for b in BINS}
    for r, k in zip(rated, kept):
        hist[score_bin(r)]["kept" if k else "dropped"] += 1
    scores = _scores(rated)
    thresholds = sorted(set(THRESHOLDS) | {threshold})
    kept_at = [{"threshold": t, "kept": len(select.curate(scores, t)), "configured": t == threshold}
               for t in thresholds]
    for row in kept_at:
        row["dropped"] = len(rated) - row["kept"]
    return {"pairs": len(rated), "threshold": threshold, "selection": selection, "seed": seed,
            "histogram": hist, "kept_at": kept_at, "kept": sum(kept), "kept_flags": kept,
            "unparsable": hist["unparsable"]["kept"] + hist["unparsable"]["dropped"]}


def fmt_threshold(t: float) -> str:
    return str(int(t)) if float(t).is_integer() else f"{t:g}"


def fmt_score(s: float | None) -> str:
    if s is None:
        return "unparsable"
    return str(int(s)) if s.is_integer() else f"{s:.2f}"


def fmt_metric(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) else esc(v)


# ------------------------------------------------------------------------------- chart geometry


def histogram_chart(hist: dict) -> dict:
    """Bars per score bin, kept (bottom) and dropped (top) stacked."""
    w, h, left, bottom, top = 520, 230, 40, 30, 20
    plot_h = h - bottom - top
    slot = (w - left - 10) / len(BINS)
    peak = max([v["kept"] + v["dropped"] for v in hist.values()] + [1])
    bins = []
    for i, b in enumerate(BINS):
        kept, dropped = hist[b]["kept"], hist[b]["dropped"]
        x = left + i * slot + slot * 0.15
        bw = slot * 0.7
        y = h - bottom
        bars = []
        for count, cls in ((kept, "kept"), (dropped, "dropped")):
            bh = plot_h * count / peak
            if count:
                bars.append({"cls": cls, "count": count, "y": y - bh, "height": bh})
            y -= bh
        bins.append({"name": b, "x": x, "width": bw, "bars": bars, "total": kept + dropped,
                     "mid": x + bw / 2, "top": y - 4})
    return {"w": w, "h": h, "left": left, "right": w - 10, "base": h - bottom, "label_y": h - bottom + 16,
            "bins": bins}


def distribution_chart(values: list[float], threshold: float) -> dict:
    """Continuous scores in bins of 0.1 from 1 to 5, with the threshold as a line."""
    w, h, left, bottom, top = 520, 170, 40, 30, 12
    lo, hi, n = 1.0, 5.0, 40
    counts = [0] * n
    for v in values:
        counts[min(n - 1, max(0, int((v - lo) / (hi - lo) * n)))] += 1
    peak = max(counts + [1])
    plot_w, plot_h = w - left - 10, h - bottom - top
    bw = plot_w / n

    def xpos(v):
        return left + (v - lo) / (hi - lo) * plot_w

    bars = []
    for i, c in enumerate(counts):
        if c:
            bh = plot_h * c / peak
            bars.append({"x": left + i * bw, "y": h - bottom - bh, "width": bw - 1, "height": bh, "count": c,
                         "lo": lo + i * (hi - lo) / n, "hi": lo + (i + 1) * (hi - lo) / n})
    x = xpos(threshold)
    line = {"x": x, "top": top - 4, "label_x": x + 4, "label_y": top + 6} if lo <= threshold <= hi else None
    return {"w": w, "h": h, "left": left, "right": w - 10, "base": h - bottom, "label_y": h - bottom + 16, "bars": bars,
            "ticks": [{"label": t, "x": xpos(t)} for t in range(1, 6)], "threshold": line}


# ------------------------------------------------------------------------------------------- page


RATER_CHECK_LABELS = {
    "rater": "rater",
    "scoring": "scoring",
    "pairs": "pairs rated",
    "spearman": "Spearman correlation, score vs. labelled quality level",
    "auc_high_vs_low": "AUC, high-quality vs. low-quality pairs",
    "auc_fit": "AUC, pairs whose instruction fits vs. pairs whose instruction does not",
    "precision_at_4": "precision of keeping score 4-5 (pairs labelled 4-5)",
    "recall_at_4": "recall of keeping score 4-5",
    "precision_at_5": "precision of keeping score 5 (pairs labelled 5)",
}
RATER_CHECK_BLOCKS = {"constructed": "constructed set", "backtranslated": "real backtranslated pairs"}


def rater_check_rows(check: dict) -> list[tuple[str, object]]:
    """(label, value): the top-level keys, then each block (constructed, backtranslated) with its name; in a
    block the known metrics first, in their order, then the others by their key."""
    def rows(block: dict, prefix: str = "") -> list[tuple[str, object]]:
        known = [(prefix + label, block[key]) for key, label in RATER_CHECK_LABELS.items() if key in block]
        return known + [(prefix + key, value) for key, value in block.items()
                        if key not in RATER_CHECK_LABELS and key != "mean_by_level" and key not in RATER_CHECK_BLOCKS]

    out = rows(check)
    for key, name in RATER_CHECK_BLOCKS.items():
        if isinstance(check.get(key), dict):
            out += rows(check[key], f"{name}: ")
    return out


def pair_view(i: int, r: dict, kept: bool) -> dict:
    s = score_of(r)
    reasoning = str(r.get("reasoning") or "")
    raw = str(r.get("rater_output") or "")
    return {"i": i, "id": r.get("id", i), "source": r.get("source"), "bin": score_bin(r), "kept": kept,
            "instruction": r.get("instruction", ""), "response": str(r.get("response", "")),
            "score": fmt_score(s), "sort": "" if s is None else repr(s), "reasoning": reasoning,
            "raw": raw if raw and raw.strip() != reasoning.strip() else ""}


def render(rated: list[dict], threshold: float, rater_check: dict | None,
           rater_check_path: str = "metrics/rater_check.json", selection: str = "score", seed: int = 0) -> str:
    s = summarize(rated, threshold, selection, seed)
    continuous = [v for v in (continuous_score(r) for r in rated) if v is not None]
    return render_template(
        "report.html.j2", s=s, t=fmt_threshold(threshold), bins=BINS, snippet=SNIPPET, reasoning_snippet=REASONING,
        histogram=histogram_chart(s["histogram"]),
        continuous=len(continuous), distribution=distribution_chart(continuous, threshold) if continuous else None,
        check=rater_check, check_is_dict=isinstance(rater_check, dict), check_path=rater_check_path,
        levels=(rater_check.get("constructed", rater_check) if isinstance(rater_check, dict) else {}).get("mean_by_level"),
        check_rows=rater_check_rows(rater_check) if isinstance(rater_check, dict) else [],
        pairs=[pair_view(i, r, k) for i, (r, k) in enumerate(zip(rated, s["kept_flags"]))],
        fmt_threshold=fmt_threshold, fmt_metric=fmt_metric)


def load_rated(path: str) -> list[dict]:
    try:
        with open(path, encoding="utf-8") as f:
            rated = json.load(f)
    except FileNotFoundError:
        raise HumpbackError(f"{path}: file not found (run `dvc repro rate` or `dvc pull` first)") from None
    except json.JSONDecodeError as e:
        raise HumpbackError(f"{path}: invalid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(rated, list) or not all(isinstance(r, dict) for r in rated):
        raise HumpbackError(f"{path}: expected a list of records")
    return rated


def load_rater_check(path: str) -> dict | None:
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise HumpbackError(f"{path}: invalid JSON ({e.msg} at line {e.lineno})") from None


def build(out: str, rated_path: str, threshold: float, rater_check_path: str, selection: str = "score",
          seed: int = 0, curated_path: str | None = None) -> dict:
    """Write the report to `out`; returns the summary it shows. Under `selection: ifd` the choice rests on
    the base model's IFD, which only the curated file (`curated_path`) holds: its pairs are the kept ones."""
    rated = load_rated(rated_path)
    if selection == "ifd":
        ifd = {r["id"]: r.get("ifd") for r in load_rated(curated_path)}
        rated = [{**r, "ifd": ifd.get(r.get("id"))} for r in rated]
    page = render(rated, threshold, load_rater_check(rater_check_path), rater_check_path, selection, seed)
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        f.write(page)
    return summarize(rated, threshold, selection, seed)
