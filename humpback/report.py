"""The curation report: one self-contained HTML page (inline CSS, SVG and JS; nothing from a network).

It shows the score histogram, kept and dropped counts at several thresholds, the rater check, and
every rated pair in a table that sorts, filters and searches in the browser. The table's state lives
in the URL fragment (`curation.html#score=4&kept=yes&q=python&sort=score-desc`), so a view can be
shared as a link, and tests can open a filtered view directly.

The output depends only on its inputs (no timestamps), so its DVC hash changes only when they do.
"""

from __future__ import annotations

import html
import json
import math
import os

from . import HumpbackError

THRESHOLDS = (3, 4, 5)
BINS = ("1", "2", "3", "4", "5", "unparsable")
SNIPPET = 110  # characters of a response shown before it is expanded


def esc(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _number(value) -> float | None:
    # bool is an int in Python, never a score
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) else None


def score_of(record: dict) -> float | None:
    return _number(record.get("score"))


def score_bin(record: dict) -> str:
    """The histogram bin, as humpback.curation.score_histogram makes it: expected scores are rounded."""
    s = score_of(record)
    return "unparsable" if s is None else str(min(5, max(1, int(round(s)))))


def is_kept(record: dict, threshold: float) -> bool:
    """The rule `curate` applies: score at or above the threshold; a missing score is never kept."""
    s = score_of(record)
    return s is not None and s >= threshold


def continuous_score(record: dict) -> float | None:
    """A non-integer score if the record has one: `score_expected`, else a non-integer `score`."""
    for key in ("score_expected", "score"):
        v = _number(record.get(key))
        if v is not None and (key == "score_expected" or v != int(v)):
            return v
    return None


def summarize(rated: list[dict], threshold: float) -> dict:
    hist = {b: {"kept": 0, "dropped": 0} for b in BINS}
    for r in rated:
        hist[score_bin(r)]["kept" if is_kept(r, threshold) else "dropped"] += 1
    thresholds = sorted(set(THRESHOLDS) | {threshold})
    kept_at = [{"threshold": t, "kept": sum(is_kept(r, t) for r in rated), "configured": t == threshold}
               for t in thresholds]
    for row in kept_at:
        row["dropped"] = len(rated) - row["kept"]
    return {"pairs": len(rated), "threshold": threshold, "histogram": hist, "kept_at": kept_at,
            "kept": sum(is_kept(r, threshold) for r in rated),
            "unparsable": hist["unparsable"]["kept"] + hist["unparsable"]["dropped"]}


def fmt_threshold(t: float) -> str:
    return str(int(t)) if float(t).is_integer() else f"{t:g}"


def fmt_score(s: float | None) -> str:
    if s is None:
        return "unparsable"
    return str(int(s)) if s.is_integer() else f"{s:.2f}"


def fmt_metric(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) else esc(v)


# ---------------------------------------------------------------------------------------------- SVG


def histogram_svg(hist: dict) -> str:
    """Bars per score bin, kept (bottom) and dropped (top) stacked."""
    w, h, left, bottom, top = 520, 230, 40, 30, 20
    plot_h = h - bottom - top
    slot = (w - left - 10) / len(BINS)
    peak = max([v["kept"] + v["dropped"] for v in hist.values()] + [1])
    parts = [f'<svg class="chart" role="img" aria-label="Score histogram" width="{w}" height="{h}" '
             f'viewBox="0 0 {w} {h}" xmlns="http://www.w3.org/2000/svg">',
             f'<line x1="{left}" y1="{h - bottom}" x2="{w - 10}" y2="{h - bottom}" class="axis"/>']
    for i, b in enumerate(BINS):
        kept, dropped = hist[b]["kept"], hist[b]["dropped"]
        x = left + i * slot + slot * 0.15
        bw = slot * 0.7
        y = h - bottom
        for count, cls in ((kept, "kept"), (dropped, "dropped")):
            bh = plot_h * count / peak
            if count:
                parts.append(f'<rect class="bar {cls}" data-bin="{b}" x="{x:.1f}" y="{y - bh:.1f}" width="{bw:.1f}" '
                             f'height="{bh:.1f}"><title>score {b}: {count} {cls}</title></rect>')
            y -= bh
        parts.append(f'<text x="{x + bw / 2:.1f}" y="{y - 4:.1f}" class="count">{kept + dropped}</text>')
        parts.append(f'<text x="{x + bw / 2:.1f}" y="{h - bottom + 16}" class="label">{b}</text>')
    parts.append("</svg>")
    return "".join(parts)


def distribution_svg(values: list[float], threshold: float) -> str:
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

    parts = [f'<svg class="chart" role="img" aria-label="Continuous score distribution" width="{w}" height="{h}" '
             f'viewBox="0 0 {w} {h}" xmlns="http://www.w3.org/2000/svg">',
             f'<line x1="{left}" y1="{h - bottom}" x2="{w - 10}" y2="{h - bottom}" class="axis"/>']
    for i, c in enumerate(counts):
        if c:
            bh = plot_h * c / peak
            a, b = lo + i * (hi - lo) / n, lo + (i + 1) * (hi - lo) / n
            parts.append(f'<rect class="bar dist" x="{left + i * bw:.1f}" y="{h - bottom - bh:.1f}" width="{bw - 1:.1f}" '
                         f'height="{bh:.1f}"><title>{a:.1f} to {b:.1f}: {c}</title></rect>')
    for t in range(1, 6):
        parts.append(f'<text x="{xpos(t):.1f}" y="{h - bottom + 16}" class="label">{t}</text>')
    if lo <= threshold <= hi:
        x = xpos(threshold)
        parts.append(f'<line x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{h - bottom}" class="threshold"/>'
                     f'<text x="{x + 4:.1f}" y="{top + 6}" class="tlabel">threshold {esc(fmt_threshold(threshold))}</text>')
    parts.append("</svg>")
    return "".join(parts)


# --------------------------------------------------------------------------------------- sections


def thresholds_table(summary: dict) -> str:
    rows = []
    for row in summary["kept_at"]:
        cls = ' class="configured"' if row["configured"] else ""
        mark = " (configured)" if row["configured"] else ""
        pct = 100 * row["kept"] / summary["pairs"] if summary["pairs"] else 0
        rows.append(f'<tr{cls} data-threshold="{esc(fmt_threshold(row["threshold"]))}"><td>&ge; {esc(fmt_threshold(row["threshold"]))}{mark}</td>'
                    f'<td class="num kept-n">{row["kept"]}</td><td class="num dropped-n">{row["dropped"]}</td>'
                    f'<td class="num">{pct:.0f}%</td></tr>')
    return ('<table class="small" id="thresholds"><thead><tr><th>threshold</th><th>kept</th><th>dropped</th>'
            f'<th>kept share</th></tr></thead><tbody>{"".join(rows)}</tbody></table>')


RATER_CHECK_LABELS = {
    "rater": "rater",
    "scoring": "scoring",
    "pairs": "pairs rated",
    "spearman": "Spearman correlation, score vs. intended quality level",
    "auc_high_vs_low": "AUC, high-quality vs. low-quality pairs",
    "auc_offtopic": "AUC, matched vs. off-topic instruction",
}


def rater_check_section(check: dict | None, path: str) -> str:
    if check is None:
        return (f'<p class="muted" id="rater-check-missing">Rater check not run ({esc(path)} not found): '
                "no measurement of how well this rater separates good pairs from bad ones.</p>")
    if not isinstance(check, dict):
        return f'<p class="muted">Rater check: {esc(path)} is not a JSON object.</p>'
    rows = [f"<tr><td>{esc(label)}</td><td class=\"num\">{fmt_metric(check[key])}</td></tr>"
            for key, label in RATER_CHECK_LABELS.items() if key in check]
    rows += [f"<tr><td>{esc(key)}</td><td class=\"num\">{fmt_metric(value)}</td></tr>"
             for key, value in check.items() if key not in RATER_CHECK_LABELS and key != "mean_by_level"]
    out = f'<table class="small" id="rater-check"><tbody>{"".join(rows)}</tbody></table>'
    levels = check.get("mean_by_level")
    if isinstance(levels, dict) and levels:
        head = "".join(f"<th>{esc(k)}</th>" for k in levels)
        cells = "".join(f'<td class="num">{fmt_metric(v)}</td>' for v in levels.values())
        out += ('<p>Mean score by intended quality level:</p><table class="small" id="mean-by-level">'
                f"<thead><tr><th>level</th>{head}</tr></thead><tbody><tr><td>mean score</td>{cells}</tr></tbody></table>")
    return out + ('<p class="muted">AUC: the chance that a pair from the better group outscores one from the worse '
                  "group (0.5 is chance, 1 is perfect).</p>")


def long_text(text: str, limit: int) -> str:
    if len(text) <= limit:
        return esc(text)
    return f"<details><summary>{esc(text[:limit].rstrip())}&hellip;</summary>{esc(text)}</details>"


def pair_row(i: int, r: dict, threshold: float) -> str:
    s = score_of(r)
    kept = is_kept(r, threshold)
    reasoning = str(r.get("reasoning") or "")
    raw = str(r.get("rater_output") or "")
    rater = long_text(reasoning, 300) if reasoning else ""
    if raw and raw.strip() != reasoning.strip():
        rater += f'<details class="raw"><summary>rater output</summary><pre>{esc(raw)}</pre></details>'
    source = f'<div class="muted">{esc(r["source"])}</div>' if r.get("source") else ""
    return (f'<tr data-i="{i}" data-bin="{score_bin(r)}" data-kept="{"yes" if kept else "no"}">'
            f'<td data-sort="{i}">{esc(r.get("id", i))}{source}</td>'
            f'<td>{esc(r.get("instruction", ""))}</td>'
            f'<td>{long_text(str(r.get("response", "")), SNIPPET)}</td>'
            f'<td class="num" data-sort="{"" if s is None else repr(s)}">{esc(fmt_score(s))}</td>'
            f"<td>{rater}</td>"
            f'<td data-sort="{int(kept)}" class="{"kept" if kept else "dropped"}">{"kept" if kept else "dropped"}</td></tr>')


def pairs_table(rated: list[dict], threshold: float) -> str:
    bins = "".join(f'<option value="{b}">{b}</option>' for b in BINS)
    controls = (
        '<div class="controls">'
        f'<label>score <select id="f-score"><option value="all">all</option>{bins}</select></label> '
        '<label>kept <select id="f-kept"><option value="all">all</option><option value="yes">kept</option>'
        '<option value="no">dropped</option></select></label> '
        '<label>search <input id="f-q" type="search" placeholder="instruction, response, reasoning"></label> '
        f'<span>showing <b id="shown">{len(rated)}</b> of {len(rated)} pairs</span></div>')
    head = "".join(f'<th data-key="{key}" data-type="{t}" title="sort">{name}</th>' for key, name, t in (
        ("id", "id", "num"), ("instruction", "generated instruction", "text"), ("response", "response", "text"),
        ("score", "score", "num"), ("reasoning", "reasoning", "text"), ("kept", "kept", "num")))
    body = "".join(pair_row(i, r, threshold) for i, r in enumerate(rated))
    return f'{controls}<table id="pairs"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1200px; padding: 0 1em; color: #222; }
h1 { margin-bottom: .2em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
.muted { color: #666; font-size: .9em; }
.row { display: flex; flex-wrap: wrap; gap: 2em; align-items: flex-start; }
table { border-collapse: collapse; }
th, td { border: 1px solid #ddd; padding: .3em .5em; vertical-align: top; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.small td, table.small th { font-size: .95em; }
tr.configured { background: #fff3c4; font-weight: 600; }
#pairs { width: 100%; font-size: .9em; margin-top: .5em; }
#pairs th { cursor: pointer; background: #f4f4f4; position: sticky; top: 0; user-select: none; }
#pairs th[aria-sort=ascending]::after { content: " \\25B2"; } #pairs th[aria-sort=descending]::after { content: " \\25BC"; }
#pairs td:nth-child(2) { max-width: 22em; } #pairs td:nth-child(3) { max-width: 30em; }
#pairs td.kept { color: #2e7d32; font-weight: 600; } #pairs td.dropped { color: #777; }
details > summary { cursor: pointer; } details.raw pre { white-space: pre-wrap; font-size: .9em; margin: .3em 0; }
.controls { display: flex; flex-wrap: wrap; gap: 1em; align-items: center; position: sticky; top: 0; background: #fff; padding: .5em 0; z-index: 1; }
svg.chart text { font-size: 11px; text-anchor: middle; fill: #333; }
svg.chart .axis { stroke: #999; } .bar.kept { fill: #2e7d32; } .bar.dropped { fill: #b0b0b0; } .bar.dist { fill: #5472d3; }
svg.chart .threshold { stroke: #c62828; stroke-dasharray: 4 3; } svg.chart .tlabel { text-anchor: start; fill: #c62828; }
.legend span { display: inline-block; width: .8em; height: .8em; margin: 0 .3em 0 1em; vertical-align: middle; }
"""

# Filters, sorting and search; the state is read from and written to the URL fragment.
JS = """
(function () {
  const tbody = document.querySelector("#pairs tbody");
  const rows = Array.from(tbody.rows);
  const text = new Map(rows.map((r) => [r, r.textContent.toLowerCase()]));
  const ctl = {score: document.getElementById("f-score"), kept: document.getElementById("f-kept"),
               q: document.getElementById("f-q")};
  const heads = Array.from(document.querySelectorAll("#pairs th"));
  let sort = null;  // {col, desc}

  function pick(select, value) {
    select.value = Array.from(select.options).some((o) => o.value === value) ? value : "all";
  }
  function readHash() {
    const h = new URLSearchParams(location.hash.slice(1));
    pick(ctl.score, h.get("score") || "all");
    pick(ctl.kept, h.get("kept") || "all");
    ctl.q.value = h.get("q") || "";
    const m = /^(\\w+)-(asc|desc)$/.exec(h.get("sort") || "");
    const col = m ? heads.findIndex((th) => th.dataset.key === m[1]) : -1;
    sort = col >= 0 ? {col: col, desc: m[2] === "desc"} : null;
  }
  function writeHash() {
    const h = new URLSearchParams();
    if (ctl.score.value !== "all") h.set("score", ctl.score.value);
    if (ctl.kept.value !== "all") h.set("kept", ctl.kept.value);
    if (ctl.q.value) h.set("q", ctl.q.value);
    if (sort) h.set("sort", heads[sort.col].dataset.key + (sort.desc ? "-desc" : "-asc"));
    history.replaceState(null, "", h.toString() ? "#" + h.toString() : location.pathname + location.search);
  }
  function key(row, col) {
    const cell = row.cells[col];
    return cell.dataset.sort !== undefined ? cell.dataset.sort : cell.textContent.trim().toLowerCase();
  }
  function compare(a, b) {
    const col = sort.col, ka = key(a, col), kb = key(b, col);
    if (ka === "" || kb === "") return (ka === "") - (kb === "");  // no score: always last
    const numeric = heads[col].dataset.type === "num";
    const d = numeric ? Number(ka) - Number(kb) : ka.localeCompare(kb);
    return (sort.desc ? -d : d) || Number(a.dataset.i) - Number(b.dataset.i);
  }
  function apply() {
    const score = ctl.score.value, kept = ctl.kept.value, q = ctl.q.value.trim().toLowerCase();
    let shown = 0;
    for (const r of rows) {
      const ok = (score === "all" || r.dataset.bin === score) && (kept === "all" || r.dataset.kept === kept) &&
                 (!q || text.get(r).includes(q));
      r.hidden = !ok;
      shown += ok;
    }
    document.getElementById("shown").textContent = shown;
    const order = sort ? rows.slice().sort(compare) : rows;
    order.forEach((r) => tbody.appendChild(r));
    heads.forEach((th, i) => th.setAttribute("aria-sort", sort && sort.col === i ? (sort.desc ? "descending" : "ascending") : "none"));
  }
  heads.forEach((th, i) => th.addEventListener("click", () => {
    sort = sort && sort.col === i ? (sort.desc ? null : {col: i, desc: true}) : {col: i, desc: false};
    writeHash(); apply();
  }));
  for (const c of Object.values(ctl)) c.addEventListener("input", () => { writeHash(); apply(); });
  window.addEventListener("hashchange", () => { readHash(); apply(); });
  readHash(); apply();
})();
"""


def render(rated: list[dict], threshold: float, rater_check: dict | None,
           rater_check_path: str = "metrics/rater_check.json") -> str:
    s = summarize(rated, threshold)
    t = esc(fmt_threshold(threshold))
    continuous = [v for v in (continuous_score(r) for r in rated) if v is not None]
    dist = ""
    if continuous:
        dist = (f"<div><h3>Continuous scores ({len(continuous)} pairs)</h3>{distribution_svg(continuous, threshold)}"
                '<p class="muted">Probability-weighted (expected) scores, in bins of 0.1.</p></div>')
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Self-curation report</title>
<style>{CSS}</style>
</head>
<body>
<h1>Self-curation report</h1>
<p id="summary"><b>{s["pairs"]}</b> self-augmented pairs rated; at <code>curation.threshold</code> = <b>{t}</b>,
<b id="kept-count">{s["kept"]}</b> kept and <b>{s["pairs"] - s["kept"]}</b> dropped
({s["unparsable"]} with no parsable score, never kept).</p>

<h2>Scores</h2>
<div class="row">
<div><h3>Score histogram</h3>{histogram_svg(s["histogram"])}
<div class="legend muted"><span style="background:#2e7d32"></span>kept at {t}<span style="background:#b0b0b0"></span>dropped</div></div>
{dist}
<div><h3>Kept and dropped by threshold</h3>{thresholds_table(s)}
<p class="muted">A pair is kept when its score is at or above the threshold.</p></div>
</div>

<h2>Rater check</h2>
{rater_check_section(rater_check, rater_check_path)}

<h2>Pairs</h2>
<p class="muted">Click a column header to sort. The view is kept in the address (after <code>#</code>), so it can be shared.</p>
{pairs_table(rated, threshold)}
<script>{JS}</script>
</body>
</html>
"""


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


def build(out: str, rated_path: str, threshold: float, rater_check_path: str) -> dict:
    """Write the report to `out`; returns the summary it shows."""
    rated = load_rated(rated_path)
    page = render(rated, threshold, load_rater_check(rater_check_path), rater_check_path)
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        f.write(page)
    return summarize(rated, threshold)
