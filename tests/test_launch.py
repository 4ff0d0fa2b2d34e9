"""The pipeline under `accelerate launch` with 2 CPU processes (gloo DDP), on tiny models.

- training: every process trains on its share of each global batch; at the same global batch the
  losses match one process's;
- self_augment and rate: the processes share out the batches; the outs are byte-identical to one
  process's;
- a threshold change still reruns only what follows the ratings.
"""

import json
import os
import shutil

import pytest
import yaml

import tiny

pytestmark = pytest.mark.slow


def load(ws, rel):
    with open(os.path.join(ws, rel), encoding="utf-8") as f:
        return json.load(f)


def read_bytes(ws, rel):
    with open(os.path.join(ws, rel), "rb") as f:
        return f.read()


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory, repo_root, tiny_model):
    ws = tiny.make_workspace(str(tmp_path_factory.mktemp("ws-launch")), repo_root, tiny_model,
                             **{"launch.num_processes": 2})
    proc = tiny.run(["dvc", "repro"], ws)
    assert tiny.ran_stages(proc.stdout) == tiny.STAGES
    return ws, proc


def test_stages_run_in_two_processes(two_processes):
    ws, proc = two_processes
    with open(os.path.join(ws, "dvc.lock")) as f:
        lock = yaml.safe_load(f)["stages"]
    for stage in ("inverse_sft", "self_augment", "seed_sft", "rate", "finetune_round1", "rerate", "finetune"):
        assert "--num_processes 2" in lock[stage]["cmd"], stage
    # Each launched stage reports its time once (the main process), and DDP trained on both.
    assert proc.stderr.count("timings: inverse_sft ") == 1
    assert proc.stderr.count("timings: self_augment ") == 1
    assert load(ws, "metrics/inverse_sft.json")["steps"] == 2


def test_sharded_generation_and_rating_equal_one_process(two_processes, tmp_path):
    ws, _ = two_processes
    outs = ["data/self_augmented.json", "metrics/self_augment.json", "data/rated_round1.json", "metrics/rate.json",
            "plots/score_histogram.json"]
    sharded = {rel: read_bytes(ws, rel) for rel in outs}
    assert len(load(ws, "data/self_augmented.json")) == 12
    # The same stages in one process, from an empty result cache (nothing is served from the 2-process run).
    env = {"HUMPBACK_CACHE_DIR": str(tmp_path / "cache")}
    for script in ("stages/self_augment.py", "stages/rate.py"):
        tiny.run(["python", script], ws, env=env)
    for rel in outs:
        assert read_bytes(ws, rel) == sharded[rel], rel


def test_threshold_change_reruns_only_curation_and_after(two_processes):
    ws, _ = two_processes
    tiny.set_params(ws, **{"curation.threshold": 3})
    proc = tiny.run(["dvc", "repro"], ws)
    assert tiny.ran_stages(proc.stdout) == tiny.AFTER_RATE


def test_two_processes_train_as_one_at_the_same_global_batch(two_processes, tmp_path):
    ws, _ = two_processes
    two = load(ws, "metrics/inverse_sft.json")  # 2 processes x 2 examples per step

    def one_process(batch: int) -> dict:
        work = str(tmp_path / f"one-{batch}")
        shutil.copytree(ws, work, ignore=shutil.ignore_patterns(".dvc", ".git"))
        tiny.set_params(work, **{"inverse_sft.per_device_train_batch_size": batch, "launch.num_processes": 1})
        tiny.run(["python", "stages/inverse_sft.py"], work, env={"HUMPBACK_CACHE_DIR": str(tmp_path / "cache")})
        return load(work, "metrics/inverse_sft.json")

    one = one_process(4)  # 1 process x 4 examples per step: the same examples in each step
    assert one["steps"] == two["steps"] and one["train_examples"] == two["train_examples"]
    gap = abs(one["train_loss"] - two["train_loss"])
    assert gap <= 0.002 * one["train_loss"], (one, two)
    assert one["eval_loss"] == pytest.approx(two["eval_loss"], rel=0.002)
    # The tolerance is tight enough to tell another global batch apart (other examples in each step).
    other = one_process(2)
    assert abs(other["train_loss"] - two["train_loss"]) > 5 * gap, (other, two)


def test_vllm_in_several_processes_is_a_one_line_error(two_processes):
    ws, _ = two_processes
    tiny.set_params(ws, **{"launch.engine": "vllm"})
    try:
        proc = tiny.run(["humpback", "launch", "--config_file", "profiles/accelerate/ddp.yaml", "--num_processes", "2",
                         "stages/self_augment.py"], ws, check=False)
    finally:
        tiny.set_params(ws, **{"launch.engine": "native"})
    assert proc.returncode == 1
    assert "error: launch.engine: vllm runs in one process" in proc.stderr
    assert "Traceback" not in proc.stderr and "ChildFailedError" not in proc.stderr
