"""Queued experiments on two workers (`dvc queue start -j 2`) on the tiny pipeline.

Two queue workers run two experiments at once, each in its own temporary copy of the repository, sharing
what lives outside it: the result cache ($HUMPBACK_CACHE_DIR/results.sqlite), the training checkpoints
($HUMPBACK_CACHE_DIR/checkpoints, one flock per run) and the DVC cache (.dvc/cache). Each experiment
changes finetune.learning_rate, so both train the final model and evaluate it (new generations written
to the result cache) at the same time. Every task must succeed, and each must report exactly the metrics
of the same experiment run alone with `dvc exp run`, from a cache in the same state.

Before starting, the test sends `dvc queue stop` after the workers of an earlier start have exited: DVC's
filesystem broker keeps that stop for the next worker of each number, which then stops after one
experiment and leaves the rest Queued (README, "Experiments in parallel"). scripts/queue-start drops
such messages, then starts the workers.
"""

import glob
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

import tiny

pytestmark = pytest.mark.slow

LEARNING_RATES = {"par-lr-a": 0.003, "par-lr-b": 0.03}  # the tiny profile's is 0.0003


def metrics_of(ws, names):
    """{experiment name: its metrics files} from `dvc exp show --json`."""
    shown = json.loads(tiny.run(["dvc", "exp", "show", "--json"], ws).stdout)
    found = {}
    for commit in shown[1:]:
        for exp in commit.get("experiments") or []:
            for rev in exp["revs"]:
                if rev.get("name") in names:
                    data = rev["data"]
                    found[rev["name"]] = {
                        "learning_rate": data["params"]["params.yaml"]["data"]["finetune"]["learning_rate"],
                        **{path: m["data"] for path, m in data["metrics"].items()},
                    }
    return found


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_run):
    """A committed tiny workspace after `dvc repro` (a copy of conftest's tiny_run: every stage ran), and two
    copies of its result cache in that state."""
    caches = tmp_path_factory.mktemp("queue-caches")
    par_env = {"HUMPBACK_CACHE_DIR": str(caches / "parallel"), "OMP_NUM_THREADS": "1"}
    seq_env = {"HUMPBACK_CACHE_DIR": str(caches / "sequential"), "OMP_NUM_THREADS": "1"}
    ws = tiny.copy_workspace(tiny_run[0], str(tmp_path_factory.mktemp("queue-ws")))
    tiny.run(["git", "add", "-A"], ws)
    tiny.run(["git", "commit", "-qm", "tiny repro"], ws)
    for name in ("parallel", "sequential"):
        shutil.copytree(tiny_run[1], caches / name)  # no process uses it now
    yield ws, par_env, seq_env
    # A worker whose monitor died never exits by itself; this workspace is discarded, so a stale stop is harmless.
    tiny.run(["dvc", "queue", "stop"], ws, check=False)


def start_workers(cmd, ws, env):
    """Run a command that starts queue workers; its output. To a file, not a pipe: the daemonized workers
    inherit it, and a worker that outlives its idle timeout (dvc-task's monitor thread can die on a
    half-written broker message) would hold a pipe, and this call, open."""
    log = os.path.join(os.path.dirname(ws), "queue-start.log")
    with open(log, "w") as out:
        rc = subprocess.run(cmd, cwd=ws, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env}).returncode
    with open(log, encoding="utf-8") as f:
        output = f.read()
    assert rc == 0, output
    return output


def workers_running(ws):
    """Numbers of the queue workers whose process has not exited (dvc-task's dvc-exp-worker-N.json)."""
    running = set()
    for path in glob.glob(os.path.join(ws, ".dvc", "tmp", "exps", "celery", "dvc-exp-worker-*.json")):
        with open(path, encoding="utf-8") as f:
            if json.load(f).get("returncode") is None:
                running.add(int(path.rsplit("-", 1)[1].split(".")[0]))
    return running


def wait_for_queue(ws, names, timeout=420):
    """The final status of each named task; fails if one stays Queued with no worker left to run it."""
    deadline, idle = time.time() + timeout, 0
    while True:
        status = tiny.run(["dvc", "queue", "status"], ws).stdout
        mine = {line.split()[1]: line.split()[-1] for line in status.splitlines()
                if len(line.split()) > 2 and line.split()[1] in names}
        if len(mine) == len(names) and not {"Queued", "Running"} & set(mine.values()):
            return mine
        # Queued with no worker for 6 polls (longer than a worker takes to start): nothing will run it. (A
        # worker told to stop answers no more, but finishes its experiment: Running is waited for.)
        stuck = "Queued" in mine.values() and "Worker status: 0 active, 0 idle" in status
        idle = idle + 1 if stuck else 0
        assert idle < 6, f"tasks left with no queue worker:\n{status}"
        assert time.time() < deadline, f"queue still running:\n{status}"
        time.sleep(3)


def test_two_workers_give_the_results_of_one_at_a_time(setup, repo_root):
    ws, par_env, seq_env = setup
    names = list(LEARNING_RATES)
    celery = os.path.join(ws, ".dvc", "tmp", "exps", "celery")
    queue_start = os.path.join(repo_root, "scripts", "queue-start")
    if os.path.exists(queue_start):
        # Workers 1 and 2 start on an empty queue and exit after their idle timeout; then a `dvc queue stop`
        # finds no worker running, and waits in the broker for the next workers 1 and 2.
        start_workers(["dvc", "queue", "start", "-j", "2"], ws, par_env)
        deadline = time.time() + 60
        while workers_running(ws) and time.time() < deadline:
            time.sleep(2)
        tiny.run(["dvc", "queue", "stop"], ws)
        while workers_running(ws) and time.time() < deadline:  # one whose monitor died takes the stop itself
            time.sleep(2)
        assert not workers_running(ws)
        stale = glob.glob(os.path.join(celery, "broker", "in", "*.celery.pidbox.msg"))
        start = [sys.executable, queue_start, "-j", "2"]
    else:  # a checkout without the script: plain DVC, on a broker no worker has used
        stale, start = [], ["dvc", "queue", "start", "-j", "2"]
    for log in glob.glob(os.path.join(celery, "dvc-exp-worker-*.out")):
        os.remove(log)  # each worker's log, below, is of this run only

    for name, lr in LEARNING_RATES.items():
        proc = tiny.run(["dvc", "exp", "run", "--queue", "-n", name, "-S", f"finetune.learning_rate={lr}"], ws)
        assert f"Queued experiment '{name}'" in proc.stdout
    output = start_workers(start, ws, par_env)
    assert "Started '2' new experiments task queue workers." in output, output
    if stale:
        assert "control message(s) left for queue workers that are not running" in output, output

    status = wait_for_queue(ws, names)
    failed = [n for n, s in status.items() if s != "Success"]
    assert not failed, "\n".join(tiny.run(["dvc", "queue", "logs", n], ws, check=False).stdout for n in failed)
    # Both ran at once, one per worker, and no worker was told to stop before its experiment was done.
    events = {}
    for log in glob.glob(os.path.join(celery, "dvc-exp-worker-*.out")):
        with open(log, encoding="utf-8") as f:
            lines = [line for line in f if "run_exp[" in line or "Got shutdown" in line]
        events[os.path.basename(log)] = ["received" if " received" in line else "succeeded" if " succeeded" in line
                                         else "shutdown" for line in lines]
    assert len(events) == 2, events
    assert all(e[:2] == ["received", "succeeded"] for e in events.values()), events
    parallel = metrics_of(ws, names)

    sequential = {}
    for name, lr in LEARNING_RATES.items():
        seq_name = name.replace("par-", "seq-")
        tiny.run(["git", "reset", "-q", "--hard", "HEAD"], ws)
        tiny.run(["dvc", "checkout", "-f", "-q"], ws, env=seq_env)
        proc = tiny.run(["dvc", "exp", "run", "-n", seq_name, "-S", f"finetune.learning_rate={lr}"], ws, env=seq_env)
        assert tiny.ran_stages(proc.stdout) == ["finetune_round1", "finetune", "evaluate"], proc.stdout
        sequential[name] = metrics_of(ws, [seq_name])[seq_name]

    assert set(parallel) == set(names)
    for name in names:
        assert parallel[name] == sequential[name], name
    finetune = [parallel[n]["metrics/finetune.json"] for n in names]
    assert all(f["trained"] and f["steps"] == 2 for f in finetune)
    assert finetune[0]["train_loss"] != finetune[1]["train_loss"]  # two different experiments, not one twice
