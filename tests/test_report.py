"""The curation report: counts and escaping in Python, and the table's filters and sorting in headless Chromium."""

import json
import os
import re
import subprocess
import sys

import pytest

from browser import require_chromium
from humpback.curation.select import curate
from humpback.results import browser, report

XSS = '<script>alert("x")</script> & <b>bold</b>'


def rated_pairs():
    """20 pairs with known answers: scores 1..5 (ints and expected-style floats), 3 unparsable,
    a few containing the word "needle" (in instruction, response or reasoning, in any case)."""
    scores = [1, 2, 2, 3, 3, 3, 3.4, 2.6, 4, 4, 4, 4.2, 5, 5, 4.8, 1.2, 3.5, None, None, None]
    pairs = []
    for i, s in enumerate(scores):
        pairs.append({
            "id": f"lima-{i:05d}",
            "instruction": f"Question {i}" + (" about a NEEDLE" if i in (2, 9) else ""),
            "response": f"Answer {i}. " + "Long text. " * (40 if i % 2 else 1) + ("needle at the end" if i == 13 else ""),
            "source": "stackexchange",
            "score": s,
            "reasoning": "" if s is None else f"Reasoning {i}" + (" (needle)" if i == 17 else ""),
            "rater_output": "no score here" if s is None else f"Reasoning {i}. Score: {s}",
        })
    pairs[0]["instruction"] = XSS
    pairs[1]["response"] = XSS
    pairs[4]["reasoning"] = XSS
    return pairs


def visible(dom):
    """(id, score cell) of the table rows the page's script left visible, in display order."""
    rows = re.findall(r'<tr data-i="\d+"([^>]*)><td data-sort="\d+">([^<]*)<.*?<td class="num" data-sort="[^"]*">([^<]*)</td>',
                      dom, re.S)
    return [(rid, score) for attrs, rid, score in rows if "hidden" not in attrs]


def bin_of(s):
    return "unparsable" if s is None else str(round(s))


# ------------------------------------------------------------------------------------------ Python


def test_counts_at_thresholds_and_histogram():
    pairs = rated_pairs()
    s = report.summarize(pairs, 3.5)
    assert s["pairs"] == 20 and s["unparsable"] == 3
    assert s["kept"] == sum(p["score"] is not None and p["score"] >= 3.5 for p in pairs) == 8
    assert [(r["threshold"], r["kept"], r["dropped"], r["configured"]) for r in s["kept_at"]] == [
        (3, 12, 8, False), (3.5, 8, 12, True), (4, 7, 13, False), (5, 2, 18, False)]
    hist = {b: v["kept"] + v["dropped"] for b, v in s["histogram"].items()}
    assert hist == {"1": 2, "2": 2, "3": 5, "4": 5, "5": 3, "unparsable": 3}  # 3.5 rounds to 4, 2.6 to 3
    assert s["histogram"]["4"] == {"kept": 5, "dropped": 0} and s["histogram"]["3"] == {"kept": 0, "dropped": 5}


def test_page_escapes_text_highlights_the_threshold_and_is_deterministic():
    pairs = rated_pairs()
    page = report.render(pairs, 4, None)
    assert page == report.render(rated_pairs(), 4, None)
    assert XSS not in page and "<b>bold</b>" not in page
    assert page.count(report.esc(XSS)) >= 3  # instruction, response, reasoning
    assert page.count("<script") == 1  # the page's own, at the end
    assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", page), "the page must not load anything"
    configured = re.findall(r'<tr class="configured" data-threshold="([^"]+)">.*?kept-n">(\d+)<', page)
    assert configured == [("4", "7")]
    assert re.search(r'id="kept-count">7<', page)
    assert len(re.findall(r"<tr data-i=", page)) == 20
    assert 'id="rater-check-missing"' in page and "Rater check not run" in page


def test_rater_check_metrics_are_shown():
    check = {"rater": "pkg://x/y.gguf", "scoring": "expected",
             "constructed": {"pairs": 60, "spearman": 0.4123, "auc_high_vs_low": 0.7789, "auc_fit": 0.52,
                             "mean_by_level": {str(k): 2 + k / 10 for k in range(1, 6)}},
             "backtranslated": {"precision_at_4": 0.25, "pairs": 128}}
    page = report.render(rated_pairs(), 4, check)
    assert "Rater check not run" not in page
    table = re.search(r'<table class="small" id="rater-check">(.*?)</table>', page, re.S).group(1)
    assert [re.sub(r"<[^>]+>", "", c) for c in re.findall(r'<td class="num">(.*?)</td>', table)] == [
        "pkg://x/y.gguf", "expected", "60", "0.412", "0.779", "0.520", "128", "0.250"]
    assert "real backtranslated pairs: precision of keeping score 4-5" in table
    levels = re.search(r'id="mean-by-level">(.*?)</table>', page, re.S).group(1)
    assert re.findall(r'<td class="num">([\d.]+)</td>', levels) == ["2.100", "2.200", "2.300", "2.400", "2.500"]


def test_stage_writes_the_report_and_fails_in_one_line(repo_root, tmp_path):
    (tmp_path / "params.yaml").write_text("curation:\n  threshold: 4\n")
    env = {**os.environ, "PYTHONPATH": repo_root}
    cmd = [sys.executable, os.path.join(repo_root, "stages", "report.py")]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stderr.splitlines() == [
        "error: data/curated_dataset_all_evaluated.json: file not found (run `dvc repro rate` or `dvc pull` first)"]

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "curated_dataset_all_evaluated.json").write_text(json.dumps(rated_pairs()))
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "reports/curation.html: 20 pairs, 7 kept at 4"
    page = (tmp_path / "reports" / "curation.html").read_text()
    assert page == report.render(rated_pairs(), 4, None)

    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "rater_check.json").write_text(json.dumps({"spearman": 0.5}))
    subprocess.run(cmd, cwd=tmp_path, env=env, check=True, capture_output=True)
    assert "Rater check not run" not in (tmp_path / "reports" / "curation.html").read_text()


def test_report_stage_is_declared_in_dvc_yaml(repo_root):
    """The stage depends on the code that writes the page (its templates included) and on every param
    that decides which pairs are kept."""
    import yaml

    with open(os.path.join(repo_root, "dvc.yaml")) as f:
        stages = yaml.safe_load(f)["stages"]
    assert list(stages)[-1] == "report"
    stage = stages["report"]
    assert stage["cmd"] == "python stages/report.py"
    code = ["stages/report.py", "humpback/results/report.py", "humpback/results/render.py",
            "humpback/curation/select.py", "humpback/formats.py", "humpback/config.py"]
    templates = [f"humpback/results/templates/{name}" for name in ("report.html.j2", "report.css", "report.js")]
    for path in code + templates + ["data/curated_dataset_all_evaluated.json", "metrics/rater_check.json"]:
        assert any(path == dep or path.startswith(dep.rstrip("/") + "/") for dep in stage["deps"]), path
    assert stage["params"] == ["curation.threshold", "curation.selection", "curation.seed"]
    assert stage["outs"] == ["reports/curation.html"]


def kept_marks(page):
    """{pair id: "yes" or "no"}: how the page marks each pair of the table."""
    return dict((rid, kept) for kept, rid in re.findall(
        r'<tr data-i="\d+" data-bin="[^"]+" data-kept="(yes|no)"><td data-sort="\d+">([^<]*)<', page))


def test_random_selection_marks_the_pairs_that_curate_keeps():
    pairs = rated_pairs()
    kept = {p["id"] for p in curate(pairs, 4, "random", seed=3)}
    assert kept != {p["id"] for p in curate(pairs, 4)}  # else this test would not tell them apart
    page = report.render(pairs, 4, None, selection="random", seed=3)
    assert kept_marks(page) == {p["id"]: "yes" if p["id"] in kept else "no" for p in pairs}
    s = report.summarize(pairs, 4, "random", 3)
    assert s["kept"] == len(kept) == 7 and re.search(r'id="kept-count">7<', page)
    assert {b: v["kept"] for b, v in s["histogram"].items()} == {
        b: sum(p["id"] in kept and bin_of(p["score"]) == b for p in pairs) for b in report.BINS}
    assert "curation.selection</code> = <b>random</b> (seed 3)" in page
    # the threshold's counts stay the threshold's: random keeps as many
    assert [(r["threshold"], r["kept"]) for r in s["kept_at"]] == [(3, 12), (4, 7), (5, 2)]


def test_score_selection_marks_the_threshold_s_pairs():
    pairs = rated_pairs()
    kept = {p["id"] for p in curate(pairs, 4)}
    page = report.render(pairs, 4, None)
    assert kept_marks(page) == {p["id"]: "yes" if p["id"] in kept else "no" for p in pairs}
    assert "curation.selection" not in page


def test_stage_passes_the_selection_to_the_report(repo_root, tmp_path):
    (tmp_path / "params.yaml").write_text("curation:\n  threshold: 4\n  selection: random\n  seed: 3\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "curated_dataset_all_evaluated.json").write_text(json.dumps(rated_pairs()))
    proc = subprocess.run([sys.executable, os.path.join(repo_root, "stages", "report.py")], cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": repo_root}, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    page = (tmp_path / "reports" / "curation.html").read_text()
    assert page == report.render(rated_pairs(), 4, None, selection="random", seed=3)


def test_the_report_does_not_load_torch(repo_root):
    """The report stage reads ratings only: no model, no engine, so it starts in a moment."""
    code = "import sys; import humpback.results.report; print(sorted(m for m in ('torch', 'humpback.engine') if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": repo_root},
                          capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"


# ----------------------------------------------------------------------------------------- browser


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    require_chromium()
    path = tmp_path_factory.mktemp("report") / "curation.html"
    report.build(str(path), _write(path.parent / "rated.json", rated_pairs()), 4, str(path.parent / "none.json"))
    return str(path)


def _write(path, data):
    path.write_text(json.dumps(data))
    return str(path)


def shown(page, fragment):
    dom = browser.dump_dom(browser.file_url(page, fragment), budget_ms=2000)
    counter = re.search(r'id="shown">(\d+)<', dom)
    rows = visible(dom)
    assert counter and int(counter.group(1)) == len(rows), "the page's count disagrees with its rows"
    return rows


def expected_ids(pred):
    return [p["id"] for p in rated_pairs() if pred(p)]


@pytest.mark.parametrize("fragment, pred", [
    ("", lambda p: True),
    ("score=4", lambda p: bin_of(p["score"]) == "4"),
    ("score=unparsable", lambda p: p["score"] is None),
    ("kept=yes", lambda p: p["score"] is not None and p["score"] >= 4),
    ("kept=no", lambda p: p["score"] is None or p["score"] < 4),
    ("q=needle", lambda p: "needle" in (p["instruction"] + p["response"] + p["reasoning"]).lower()),
    ("score=2&q=NEEDLE", lambda p: bin_of(p["score"]) == "2" and "needle" in p["instruction"].lower()),
    ("q=%3Cb%3Ebold", lambda p: "<b>bold" in p["instruction"] + p["response"] + p["reasoning"]),
    ("score=7", lambda p: True),  # an unknown value falls back to all
])
def test_filters_from_the_url_fragment(page, fragment, pred):
    rows = shown(page, fragment)
    assert [rid for rid, _ in rows] == expected_ids(pred)
    assert len(rows) > 0


def test_sort_by_score_puts_unparsable_last(page):
    rows = shown(page, "sort=score-desc")
    scores = [None if s == "unparsable" else float(s) for _, s in rows]
    assert len(scores) == 20 and scores[-3:] == [None] * 3
    assert scores[:-3] == sorted(scores[:-3], reverse=True) and scores[0] == 5
    rows = shown(page, "sort=score-asc&kept=yes")
    assert [float(s) for _, s in rows] == sorted(p["score"] for p in rated_pairs() if p["score"] and p["score"] >= 4)


def test_screenshot(page, tmp_path):
    out = browser.screenshot(page, str(tmp_path / "docs" / "curation-report.png"), 800, 600)
    with open(out, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
