"""DVC experiments on the tiny pipeline: a threshold experiment, a queued sweep, a failing one, plots.

All through the real `dvc` CLI in subprocesses, on a committed tiny workspace (dvc.lock included), so that
queued experiments, which run in a temporary copy of the committed repository, see the same pipeline.
"""

import json
import os
import re
import time

import pytest

import tiny

pytestmark = pytest.mark.slow

STAGES = tiny.STAGES
AFTER_RATE = tiny.AFTER_RATE


def load(ws, rel):
    with open(os.path.join(ws, rel), encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    # Module fixtures run before conftest's function-scoped autouse fixture, so set the cache dir here too.
    return {"HUMPBACK_CACHE_DIR": str(tmp_path_factory.getbasetemp() / "humpback-cache")}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_run, env):
    ws = tiny.copy_workspace(tiny_run[0], str(tmp_path_factory.mktemp("exp-ws")))  # after `dvc repro`: every stage ran
    tiny.run(["git", "add", "-A"], ws)
    tiny.run(["git", "commit", "-qm", "tiny repro"], ws)
    yield ws
    tiny.run(["dvc", "queue", "stop"], ws, check=False)  # an idle queue worker would linger for a minute


@pytest.fixture
def ws(workspace, env):
    """The committed workspace, as committed: `dvc exp run` applies its results to the workspace."""
    tiny.run(["git", "reset", "-q", "--hard", "HEAD"], workspace)
    tiny.run(["dvc", "checkout", "-f", "-q"], workspace, env=env)
    assert tiny.run(["git", "status", "--porcelain"], workspace).stdout == ""
    return workspace


@pytest.fixture(scope="module")
def scores(workspace):
    rated = load(workspace, "data/curated_dataset_all_evaluated.json")
    values = [r["score"] for r in rated if r["score"] is not None]
    assert len(values) == len(rated) == 12 and all(1 <= s <= 5 for s in values)
    assert load(workspace, "metrics/curate.json")["kept"] == 12  # the tiny profile's threshold 1 keeps all
    return values


def kept_at(scores, threshold):
    return sum(s >= threshold for s in scores)


def thresholds_keeping_some(scores, n):
    """n thresholds, taken from the scores themselves, that keep n different, non-empty, partial sets."""
    distinct = sorted(set(scores))
    assert len(distinct) > n, f"too few distinct scores to sweep: {distinct}"
    picks = [distinct[(i + 1) * len(distinct) // (n + 1)] for i in range(n)]
    kept = [kept_at(scores, t) for t in picks]
    assert len(set(kept)) == n and all(0 < k < len(scores) for k in kept), (picks, kept)
    return picks


def md_table(text):
    """The rows of a markdown table as dicts keyed by its header."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines]
    header, rows = cells[0], [c for c in cells[2:]]
    return [dict(zip(header, row)) for row in rows]


def kept_column(row):
    """`kept` of metrics/curate.json: DVC shortens it to `kept` or `metrics/curate.json:kept`."""
    keys = [k for k in row if k in ("kept", "metrics/curate.json:kept")]
    assert len(keys) == 1, list(row)
    return row[keys[0]]


def exp_names(ws):
    return set(tiny.run(["dvc", "exp", "list", "--name-only"], ws).stdout.split())


def test_threshold_experiment_reruns_only_curation_onwards_and_compares(ws, scores, env):
    threshold = thresholds_keeping_some(scores, 1)[0]  # the median score
    kept = kept_at(scores, threshold)
    proc = tiny.run(["dvc", "exp", "run", "-n", "thr-median", "-S", f"curation.threshold={threshold}"], ws, env=env)
    assert tiny.ran_stages(proc.stdout) == AFTER_RATE
    for stage in ("prepare", "inverse_sft", "self_augment", "filter", "seed_sft", "rater_check", "rate", "rerate"):
        assert f"Stage '{stage}' didn't change, skipping" in proc.stdout
    assert "Ran experiment(s): thr-median" in proc.stdout
    assert load(ws, "metrics/curate.json")["kept"] == kept == len(load(ws, "data/curated_dataset.json"))

    rows = md_table(tiny.run(["dvc", "exp", "show", "--md"], ws).stdout)
    assert rows[0]["Experiment"] == "workspace"
    baseline = rows[1]  # the branch the experiment is based on
    (exp,) = [r for r in rows if r["Experiment"].endswith("[thr-median]")]
    assert (kept_column(baseline), baseline["curation.threshold"]) == ("12", "1")
    assert (kept_column(exp), float(exp["curation.threshold"])) == (str(kept), threshold)

    diff = tiny.run(["dvc", "metrics", "diff", "HEAD", "thr-median"], ws).stdout
    line = re.search(r"^metrics/curate\.json\s+kept\s+(\S+)\s+(\S+)\s+(\S+)\s*$", diff, re.M)
    assert line, diff
    assert line.groups() == ("12", str(kept), str(kept - 12))
    diff = tiny.run(["dvc", "exp", "diff", "HEAD", "thr-median"], ws).stdout
    assert re.search(rf"^metrics/curate\.json\s+kept\s+12\s+{kept}\s+{kept - 12}\s*$", diff, re.M), diff
    assert re.search(rf"^params\.yaml\s+curation\.threshold\s+1\s+{threshold}\s", diff, re.M), diff


def test_queued_sweep_runs_three_experiments(ws, scores, env):
    thresholds = thresholds_keeping_some(scores, 3)
    names = [f"sweep-{i}" for i in range(3)]
    for name, t in zip(names, thresholds):
        proc = tiny.run(["dvc", "exp", "run", "--queue", "-n", name, "-S", f"curation.threshold={t}"], ws)
        assert f"Queued experiment '{name}'" in proc.stdout
    tiny.run(["dvc", "queue", "start"], ws, env=env)
    deadline = time.time() + 240
    while True:
        status = tiny.run(["dvc", "queue", "status"], ws).stdout
        mine = [line.split() for line in status.splitlines() if any(f" {n} " in line for n in names)]
        if len(mine) == 3 and not any(s[-1] in ("Queued", "Running") for s in mine):
            break
        assert time.time() < deadline, f"sweep still running:\n{status}"
        time.sleep(5)
    failed = [s[1] for s in mine if s[-1] != "Success"]
    assert not failed, "\n".join(tiny.run(["dvc", "queue", "logs", n], ws, check=False).stdout for n in failed)

    shown = json.loads(tiny.run(["dvc", "exp", "show", "--json"], ws).stdout)
    found = {}
    for commit in shown[1:]:
        for exp in commit.get("experiments") or []:
            for rev in exp["revs"]:
                if rev["name"] in names:
                    data = rev["data"]
                    found[rev["name"]] = (
                        data["params"]["params.yaml"]["data"]["curation"]["threshold"],
                        data["metrics"]["metrics/curate.json"]["data"]["kept"],
                        data["metrics"]["metrics/finetune.json"]["data"]["train_examples"],
                    )
    expected = {n: (t, kept_at(scores, t), kept_at(scores, t)) for n, t in zip(names, thresholds)}
    assert found == expected
    assert len({kept for _, kept, _ in found.values()}) == 3


def test_a_threshold_that_keeps_nothing_fails_in_one_line(ws, env):
    before = exp_names(ws)
    proc = tiny.run(["dvc", "exp", "run", "-S", "curation.threshold=6"], ws, check=False, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert tiny.ran_stages(proc.stdout) == ["curate_round1", "finetune_round1", "curate", "finetune"]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(
        "error: data/curated_dataset.json has 0 pairs at curation.threshold=6,"), proc.stderr
    assert "failed to reproduce 'finetune'" in out
    assert "Traceback" not in out
    assert exp_names(ws) == before  # a failed experiment is not recorded


def vega_specs(html):
    """{div id: vega-lite spec} from DVC's plots HTML (one `var spec = {...};` per plot div)."""
    found = re.findall(r'<div id = "([^"]+)">\s*<script type = "text/javascript">\s*var spec = (\{.*?\});\s*'
                       r"vegaEmbed\('#\1', spec\);", html, re.S)
    return {plot_id: json.loads(spec) for plot_id, spec in found}


def loss_curve_files(ws):
    """The files of the `Loss curves` plot in dvc.yaml, as DVC labels them (common prefix dropped)."""
    import yaml

    with open(os.path.join(ws, "dvc.yaml")) as f:
        plots = yaml.safe_load(f)["plots"]
    (files,) = [list(p["Loss curves"]["y"]) for p in plots if isinstance(p, dict) and "Loss curves" in p]
    assert {f.split("/")[1] for f in files} == {"inverse_sft", "finetune"}, files  # dvclive/<run>/...
    common = os.path.commonpath(files)
    return {os.path.relpath(f, common) for f in files}


def check_plots(html, revs, runs):
    specs = vega_specs(html)
    assert {"plots_score_histogram_json", "Loss_curves"} <= set(specs), list(specs)
    hist = specs["plots_score_histogram_json"]
    assert hist["title"]["text"] == "Self-curation score histogram"
    by_rev = {}
    for row in hist["data"]["values"]:
        by_rev.setdefault(row["rev"], {})[row["score"]] = row["count"]
    assert set(by_rev) == set(revs)
    for counts in by_rev.values():
        assert set(counts) == {"1", "2", "3", "4", "5", "unparsable"} and sum(counts.values()) == 12

    loss = specs["Loss_curves"]
    assert loss["title"]["text"].startswith("Training loss")
    points = {}
    for row in loss["data"]["values"]:
        points.setdefault((row["rev"], row["filename"]), []).append(float(row["loss"]))
    assert set(points) == {(rev, run) for rev in revs for run in runs}, sorted(points)
    assert all(v > 0 for losses in points.values() for v in losses)
    return specs


def test_plots_show_and_diff_render_histogram_and_loss_curves(ws, tmp_path):
    shown = json.loads(tiny.run(["dvc", "plots", "show", "--json"], ws).stdout)["data"]
    assert {"plots/score_histogram.json", "Loss curves"} <= set(shown), list(shown)

    tiny.run(["dvc", "plots", "show", "-o", str(tmp_path / "show")], ws)
    with open(tmp_path / "show" / "index.html", encoding="utf-8") as f:
        check_plots(f.read(), ["workspace"], loss_curve_files(ws))

    exps = sorted(exp_names(ws))
    assert exps, "no experiment to compare: the experiment tests above must run first"
    tiny.run(["dvc", "plots", "diff", "HEAD", *exps[:2], "-o", str(tmp_path / "diff")], ws)
    with open(tmp_path / "diff" / "index.html", encoding="utf-8") as f:
        specs = check_plots(f.read(), ["HEAD", *exps[:2]], loss_curve_files(ws))
    # rate did not rerun: every experiment shows the histogram of HEAD
    values = specs["plots_score_histogram_json"]["data"]["values"]
    counts = {rev: [(r["score"], r["count"]) for r in values if r["rev"] == rev] for rev in ["HEAD", *exps[:2]]}
    assert counts[exps[0]] == counts["HEAD"]

