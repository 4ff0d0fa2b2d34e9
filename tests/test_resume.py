"""Training that survives a kill (humpback/training/checkpoints.py): SIGKILL a real LoRA run after its first checkpoint,
rerun it, and get what an uninterrupted run gives, without running the steps before the checkpoint again.

The killed run is its own process (this file is its driver: `python tests/test_resume.py SPEC.json`); it
stops in the middle of step 16, after the checkpoint at step 10 and after DVCLive logged steps 11-15, and
waits there to be killed, so the kill always lands between two checkpoints. Every run counts its calls to
trl's `training_step` (one per optimizer step here): the observable that says which steps ran.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS, HANG_AFTER = 30, 15  # checkpoints every CHECKPOINT_STEPS=10 steps (logging_steps=1): at 10 and 20
PARAMS = dict(max_steps=STEPS, per_device_train_batch_size=2, max_length=256, logging_steps=1, eval_steps=5,
              lora_r=4, lora_alpha=8)  # 24 examples: 12 steps an epoch, so the run crosses two epoch ends


def _count_training_steps(trainer_cls, counter: dict, hang_after: int | None = None, hanging: str | None = None):
    """Wrap trainer_cls.training_step to count its calls; with hang_after, stop before the next one forever."""
    original = trainer_cls.training_step

    def training_step(self, *args, **kwargs):
        if hang_after is not None and counter["steps"] == hang_after:
            open(hanging, "w").close()
            time.sleep(600)  # killed here
        counter["steps"] += 1
        counter["checkpoints"].append(sorted(os.path.basename(p) for p in glob.glob(
            os.path.join(os.environ["HUMPBACK_CACHE_DIR"], "checkpoints", "*", "checkpoint-*"))))
        return original(self, *args, **kwargs)

    return training_step


def _driver(spec_path: str) -> None:
    sys.path.insert(0, ROOT)  # this checkout's humpback, whatever is installed
    import trl

    from humpback.config import ModelParams, TrainParams
    from humpback.training import train_lora

    with open(spec_path) as f:
        spec = json.load(f)
    counter = {"steps": 0, "checkpoints": []}
    trl.SFTTrainer.training_step = _count_training_steps(trl.SFTTrainer, counter, spec["hang_after"], spec["hanging"])
    train_lora(ModelParams(base=spec["model"]), TrainParams(**spec["params"]), spec["train"], spec["eval"],
               spec["output_dir"], spec["live_dir"])


# --- helpers for the tests ---------------------------------------------------------------------------------

def _examples(repo_root, model_dir):
    from humpback import formats, prompts
    from humpback.models import load_tokenizer

    pairs = formats.parse_guanaco(formats.read_jsonl(os.path.join(repo_root, "data/raw/guanaco.jsonl")),
                                  formats.ParseReport())
    tok = load_tokenizer(model_dir)
    examples = [prompts.backward_example(p, tok, 12) for p in pairs[:28]]
    return examples[4:], examples[:4]


def _files(path) -> dict[str, bytes]:
    out = {}
    for dirpath, _, names in os.walk(path):
        for name in names:
            with open(os.path.join(dirpath, name), "rb") as f:
                out[os.path.relpath(os.path.join(dirpath, name), path)] = f.read()
    return out


def _run_dirs(cache) -> list[str]:
    root = os.path.join(cache, "checkpoints")
    return sorted(os.listdir(root)) if os.path.isdir(root) else []


@dataclasses.dataclass
class Run:
    train: list
    eval: list
    out: str
    live: str
    cache: str
    model: str

    def in_process(self, monkeypatch, capsys, **params) -> tuple[dict, dict, str]:
        """Train here; return the metrics, the step counter and what was printed on stderr."""
        import trl

        from humpback.config import ModelParams, TrainParams
        from humpback.training import train_lora

        counter = {"steps": 0, "checkpoints": []}
        monkeypatch.setattr(trl.SFTTrainer, "training_step", _count_training_steps(trl.SFTTrainer, counter))
        capsys.readouterr()
        metrics = train_lora(ModelParams(base=self.model), TrainParams(**{**PARAMS, **params}), self.train,
                             self.eval, self.out, self.live)
        return metrics, counter, capsys.readouterr().err

    def kill_after_first_checkpoint(self, tmp_path) -> str:
        """Run in a process, SIGKILL it in step HANG_AFTER + 1; return its run directory (the checkpoints)."""
        hanging = str(tmp_path / "hanging")
        spec = {"model": self.model, "params": PARAMS, "train": self.train, "eval": self.eval, "output_dir": self.out,
                "live_dir": self.live, "hang_after": HANG_AFTER, "hanging": hanging}
        with open(tmp_path / "spec.json", "w") as f:
            json.dump(spec, f)
        env = {**os.environ, "HUMPBACK_CACHE_DIR": self.cache, "TQDM_DISABLE": "1"}
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), str(tmp_path / "spec.json")], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 180
            while not os.path.exists(hanging):
                assert proc.poll() is None, f"the run ended before it could be killed:\n{proc.stderr.read()[-3000:]}"
                assert time.monotonic() < deadline, "the run did not reach its step in time"
                time.sleep(0.01)
            [run_dir] = _run_dirs(self.cache)
            run_dir = os.path.join(self.cache, "checkpoints", run_dir)
            assert sorted(c for c in os.listdir(run_dir) if c.startswith("checkpoint-")) == ["checkpoint-10"]
            assert os.path.isfile(os.path.join(run_dir, "checkpoint-10", "humpback", "state.json"))  # complete
            with open(os.path.join(self.live, "plots", "metrics", "loss.tsv")) as f:
                assert len(f.read().splitlines()) == 1 + HANG_AFTER  # DVCLive logged steps past the checkpoint
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.communicate()
        assert proc.returncode == -signal.SIGKILL
        assert not os.path.exists(self.out)  # a killed run leaves no adapter behind
        return run_dir


def _setup(tmp_path, monkeypatch, repo_root, tiny_model) -> Run:
    cache = str(tmp_path / "cache")
    monkeypatch.setenv("HUMPBACK_CACHE_DIR", cache)
    monkeypatch.delenv("HUMPBACK_CHECKPOINT_STEPS", raising=False)  # the default interval
    train, eval = _examples(repo_root, tiny_model)
    return Run(train, eval, str(tmp_path / "models" / "adapter"), str(tmp_path / "dvclive" / "train"), cache,
               tiny_model)


# --- tests ---------------------------------------------------------------------------------------------------

def test_sigkill_then_rerun_resumes_and_gives_the_uninterrupted_result(tmp_path, monkeypatch, capsys, repo_root,
                                                                       tiny_model):
    run = _setup(tmp_path, monkeypatch, repo_root, tiny_model)

    # 1. Uninterrupted: checkpoints at 10 and 20 (at most 2 at a time, none at the end), all deleted after.
    metrics, counter, err = run.in_process(monkeypatch, capsys)
    assert counter["steps"] == STEPS and "resuming" not in err
    assert counter["checkpoints"][10] == ["checkpoint-10"] and counter["checkpoints"][20] == ["checkpoint-10",
                                                                                              "checkpoint-20"]
    assert max(len(c) for c in counter["checkpoints"]) == 2
    assert _run_dirs(run.cache) == []  # nothing left behind
    adapter, live = _files(run.out), _files(run.live)
    shutil.rmtree(run.out)

    # 2. The same run, killed in step 16 (checkpoint-10 written, DVCLive at step 15). Then a kill in the
    # middle of writing checkpoint-20 is simulated: its weights are there, not its trainer state.
    run_dir = run.kill_after_first_checkpoint(tmp_path)
    shutil.copytree(os.path.join(run_dir, "checkpoint-10"), os.path.join(run_dir, "checkpoint-20"),
                    ignore=shutil.ignore_patterns("trainer_state.json", "humpback"))

    # 3. The rerun resumes at step 10: only steps 11-30 run, and every output equals the uninterrupted run's.
    resumed, counter, err = run.in_process(monkeypatch, capsys)
    assert f"train: resuming from step 10 ({run_dir}/checkpoint-10)" in err
    assert counter["steps"] == STEPS - 10
    assert resumed == metrics  # train_loss (over all 30 steps), eval_loss, steps
    assert _files(run.out) == adapter  # byte for byte: adapter_model.safetensors, config, tokenizer
    assert _files(run.live) == live  # DVCLive: steps 11-15 not twice, 1-10 not lost, same summary
    assert _run_dirs(run.cache) == []


def test_a_changed_input_never_resumes_a_stale_checkpoint(tmp_path, monkeypatch, capsys, repo_root, tiny_model):
    run = _setup(tmp_path, monkeypatch, repo_root, tiny_model)
    stale = run.kill_after_first_checkpoint(tmp_path)
    backup = str(tmp_path / "stale-backup")
    shutil.copytree(stale, backup)

    changed_example = dict(run.train[3], completion=run.train[3]["completion"] + " Please.")
    for change in ({"learning_rate": 3e-4}, {"train": run.train[:3] + [changed_example] + run.train[4:]}):
        if not os.path.exists(stale):
            shutil.copytree(backup, stale)
        variant = dataclasses.replace(run, train=change.get("train", run.train))
        metrics, counter, err = variant.in_process(monkeypatch, capsys, **{k: v for k, v in change.items()
                                                                        if k != "train"})
        assert "resuming" not in err and counter["steps"] == STEPS, change
        assert counter["checkpoints"][0] == []  # it started without the stale checkpoint in sight ...
        assert _run_dirs(run.cache) == []  # ... which it deleted (no process held it), and then its own


def test_run_key_covers_every_input(tiny_model, repo_root, tmp_path):
    from humpback import training
    from humpback.config import FinetuneParams, ModelParams, TrainParams

    train, eval = _examples(repo_root, tiny_model)
    base = dict(model=ModelParams(base=tiny_model), params=TrainParams(**PARAMS), train=train, eval=eval,
                output_dir="models/a", live_dir="dvclive/a", on_gpu=False)
    key = training.run_key(**base)
    assert training.run_key(**base) == key  # a rerun finds its checkpoints
    changed = dict(
        model=ModelParams(base=tiny_model, dtype="bfloat16"),
        params=TrainParams(**{**PARAMS, "lora_dropout": 0.1}),
        train=train[:-1] + [dict(train[-1], prompt=train[-1]["prompt"] + " ")],
        eval=eval[:-1],
        output_dir="models/b",
        on_gpu=True,
    )
    for name, value in changed.items():
        assert training.run_key(**{**base, name: value}) != key, name
    assert training.run_key(**{**base, "params": FinetuneParams(**PARAMS)}) != key  # same fields, other stage

    # the base model's weights, not only its reference
    copy = str(tmp_path / "model")
    shutil.copytree(tiny_model, copy)
    before = training.run_key(**{**base, "model": ModelParams(base=copy)})
    with open(os.path.join(copy, "config.json")) as f:
        config = json.load(f)
    with open(os.path.join(copy, "config.json"), "w") as f:
        json.dump({**config, "rms_norm_eps": 1e-5}, f)
    assert training.run_key(**{**base, "model": ModelParams(base=copy)}) != before


def test_checkpoint_interval(monkeypatch):
    from humpback import HumpbackError, training
    from humpback.config import TrainParams

    monkeypatch.delenv("HUMPBACK_CHECKPOINT_STEPS", raising=False)
    assert training.checkpoint_steps(TrainParams(logging_steps=5)) == training.CHECKPOINT_STEPS == 10
    assert training.checkpoint_steps(TrainParams(logging_steps=3)) == 12  # a logging step: nothing half-summed
    monkeypatch.setenv("HUMPBACK_CHECKPOINT_STEPS", "0")
    assert training.checkpoint_steps(TrainParams(logging_steps=5)) == 0
    monkeypatch.setenv("HUMPBACK_CHECKPOINT_STEPS", "ten")
    try:
        training.checkpoint_steps(TrainParams())
    except HumpbackError as e:
        assert "HUMPBACK_CHECKPOINT_STEPS" in str(e)
    else:
        raise AssertionError("a bad HUMPBACK_CHECKPOINT_STEPS is not an error")


if __name__ == "__main__":
    _driver(sys.argv[1])
