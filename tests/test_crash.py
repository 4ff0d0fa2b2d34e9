"""SIGKILL in the middle of the real self_augment stage, then reruns: only what is missing is computed.

The stage runs as its own process (`python stages/self_augment.py`, as `dvc repro` runs it) in a tiny
workspace whose backward model was trained by `dvc repro inverse_sft`. The test watches the result
cache fill up, kills the stage with SIGKILL part way, and reruns it. The engine's report on stderr,
`self_augment: N items (C from cache, K computed)`, says what each run did.
"""

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

import tiny

NUM_SAMPLES, MORE_SAMPLES, BATCH = 96, 120, 4
REPORT = re.compile(r"self_augment: (\d+) items \((\d+) from cache, (\d+) computed\)")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, repo_root, tiny_model):
    ws = tiny.make_workspace(
        str(tmp_path_factory.mktemp("crash-ws")), repo_root, tiny_model,
        **{"augment.num_samples": NUM_SAMPLES, "augment.batch_size": BATCH, "augment.max_new_tokens": 24},
    )
    tiny.run(["dvc", "repro", "inverse_sft"], ws)
    return ws


def stage(ws: str, cache: str) -> subprocess.Popen:
    env = {**os.environ, "HUMPBACK_CACHE_DIR": cache, "TQDM_DISABLE": "1"}
    return subprocess.Popen([sys.executable, "stages/self_augment.py"], cwd=ws, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(proc: subprocess.Popen) -> tuple[int, int, int]:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    items, cached, computed = map(int, REPORT.search(err).groups())
    return items, cached, computed


def cached_results(cache: str) -> int:
    path = os.path.join(cache, "results.sqlite")
    if not os.path.exists(path):
        return 0
    db = sqlite3.connect(path, timeout=5)
    try:
        return db.execute("SELECT COUNT(*) FROM results").fetchone()[0]
    except sqlite3.OperationalError:  # the table is not created yet
        return 0
    finally:
        db.close()


def outputs(ws: str) -> list[dict]:
    with open(os.path.join(ws, "data/self_augmented.json"), encoding="utf-8") as f:
        return json.load(f)


def test_sigkill_then_rerun_computes_only_what_is_missing(workspace, tmp_path):
    ws, cache = workspace, str(tmp_path / "cache")
    out_path = os.path.join(ws, "data/self_augmented.json")

    # 1. Kill the stage once the cache holds some results, well before all of them.
    proc = stage(ws, cache)
    deadline = time.monotonic() + 240
    while cached_results(cache) < 2 * BATCH:
        assert proc.poll() is None, f"the stage ended before it could be killed:\n{proc.stderr.read()[-3000:]}"
        assert time.monotonic() < deadline, "the stage wrote no results in time"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    kept = cached_results(cache)
    assert 2 * BATCH <= kept < NUM_SAMPLES, kept
    assert kept % BATCH == 0  # whole batches only: each one is a committed transaction
    assert not os.path.exists(out_path)  # a killed run leaves no out behind

    # 2. The rerun takes every committed result from the cache and computes the rest, once.
    items, cached, computed = finish(stage(ws, cache))
    assert (items, cached, computed) == (NUM_SAMPLES, kept, NUM_SAMPLES - kept)
    resumed = outputs(ws)

    # 3. Same outputs as one uninterrupted run in a fresh cache.
    items, cached, computed = finish(stage(ws, str(tmp_path / "fresh-cache")))
    assert (items, cached, computed) == (NUM_SAMPLES, 0, NUM_SAMPLES)
    assert outputs(ws) == resumed
    assert len(resumed) == NUM_SAMPLES and any(r["instruction"] for r in resumed)

    # 4. A run over more inputs reuses the batches it shares with the old run, computes the rest, and
    #    gives what a cold run over them gives (a result is cached under its batch: engine.base.BatchedEngine._run).
    tiny.set_params(ws, **{"augment.num_samples": MORE_SAMPLES})
    items, cached, computed = finish(stage(ws, cache))
    assert items == MORE_SAMPLES and cached + computed == MORE_SAMPLES and computed < MORE_SAMPLES
    more = outputs(ws)
    assert finish(stage(ws, str(tmp_path / "cold-more"))) == (MORE_SAMPLES, 0, MORE_SAMPLES)
    assert outputs(ws) == more
