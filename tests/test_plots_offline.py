"""`humpback plots`: DVC's plots page with Vega inlined renders in headless Chromium without a network.

The project is a copy of this repository's plot sources (dvc.yaml, the committed score histogram and
DVCLive loss curves) in a fresh git + DVC repo, so `dvc plots show` and `dvc plots diff` run for real.
"""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from browser import require_chromium, split_divs, vega_marks
from humpback.results import browser

PLOTS = {"plots_score_histogram_json", "Loss_curves", "Eval_loss"}


def sh(cmd, cwd, **kw):
    return subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True, **kw)


def humpback(args, cwd, repo_root):
    env = {**os.environ, "PYTHONPATH": repo_root}  # this checkout's package, not an installed one
    return subprocess.run([sys.executable, "-m", "humpback.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def project(tmp_path_factory, repo_root):
    ws = tmp_path_factory.mktemp("plots-ws")
    for f in ("dvc.yaml", "params.yaml"):  # dvc.yaml's commands interpolate params (launch.*)
        shutil.copy(os.path.join(repo_root, f), ws)
    for d in ("plots", "dvclive"):
        shutil.copytree(os.path.join(repo_root, d), ws / d)
    sh(["git", "init", "-q"], ws)
    sh(["dvc", "init", "-q"], ws)
    sh(["git", "add", "-A"], ws)
    sh(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "plots"], ws)
    return ws


def histogram(ws):
    with open(ws / "plots" / "score_histogram.json") as f:
        return json.load(f)


def render(page):
    """Each plot div of the page after vega-embed ran: (status the template's wrapper set, marks)."""
    dom = browser.dump_dom(browser.file_url(page), budget_ms=10000)
    divs = split_divs(dom, "vega-embed")
    status = {pid: re.search(r'data-plot="(\w+)"', html) for pid, html in divs.items()}
    return {pid: (s.group(1) if s else None, vega_marks(divs[pid])) for pid, s in status.items()}


def offline_page(path):
    with open(path, encoding="utf-8") as f:
        html = f.read()
    assert "cdn.jsdelivr.net" not in html and not re.search(r"<script[^>]+src=", html), "page loads remote JS"
    assert "window.vegaEmbed=" in html.replace(" ", "")  # the inlined bundle
    return html


def check_drawn(plots, revs):
    assert PLOTS <= set(plots), list(plots)
    for pid, (status, _) in plots.items():
        assert status == "ok", f"{pid}: vega-embed did not finish ({status})"
    rects = plots["plots_score_histogram_json"][1].get("rect", [])
    assert len(rects) == 6 * revs, rects  # bins 1-5 and unparsable, per revision
    assert any(re.search(r"h(?!0v)[\d.]+v", d) for d in rects), "every bar has zero width"
    for pid in ("Loss_curves", "Eval_loss"):
        lines = [d for d in plots[pid][1].get("line", []) if "L" in d]  # a polyline of 2+ points
        assert len(lines) >= 2 * revs, f"{pid}: {len(lines)} lines for 2 runs x {revs} revisions"


def test_plots_show_renders_offline_in_headless_chromium(project, repo_root, tmp_path):
    require_chromium()
    proc = humpback(["plots", "show", "-o", str(tmp_path / "show")], project, repo_root)
    assert proc.returncode == 0, proc.stderr
    page = tmp_path / "show" / "index.html"
    offline_page(page)
    check_drawn(render(page), revs=1)


def test_plots_diff_renders_offline_in_headless_chromium(project, repo_root, tmp_path):
    require_chromium()
    hist = histogram(project)
    hist[0]["count"] += 5  # the workspace now differs from HEAD
    (project / "plots" / "score_histogram.json").write_text(json.dumps(hist))
    try:
        proc = humpback(["plots", "diff", "HEAD", "-o", str(tmp_path / "diff")], project, repo_root)
    finally:
        sh(["git", "checkout", "--", "plots"], project)
    assert proc.returncode == 0, proc.stderr
    page = tmp_path / "diff" / "index.html"
    html = offline_page(page)
    assert '"rev": "workspace"' in html and '"rev": "HEAD"' in html
    check_drawn(render(page), revs=2)


def test_template_has_what_dvc_render_requires(repo_root, tmp_path):
    from dvc_render.html import HTML

    proc = humpback(["plots", "template"], repo_root, repo_root)
    path = proc.stdout.strip()
    assert proc.returncode == 0 and os.path.isfile(path), proc.stderr
    with open(path, encoding="utf-8") as f:
        template = f.read()
    page = HTML(template).with_scripts("<script src=cdn></script>").with_element("<div>x</div>").embed()
    assert "<div>x</div>" in page and "cdn" not in page  # no {scripts}: DVC's CDN tags never land


def test_plots_rejects_a_second_template(repo_root):
    proc = humpback(["plots", "show", "--html-template", "x.html"], repo_root, repo_root)
    assert proc.returncode == 1 and proc.stderr.startswith("error: --html-template is set by"), proc.stderr
