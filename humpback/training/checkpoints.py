"""Training that survives a kill: checkpoints keyed by the run, held under locks, and resumed exactly.

A run keeps checkpoints (adapter, optimizer, scheduler, RNG, trainer state and the DVCLive directory so
far) every `checkpoint_steps` optimizer steps in `$HUMPBACK_CACHE_DIR/checkpoints/`, keyed by everything
that determines the run (`run_key`). A rerun after a kill resumes from the last complete one and gives the
adapter, metrics and DVCLive output of an uninterrupted run (tests/test_resume.py); a changed input gives
another key, so it never resumes a stale run. A successful run deletes its checkpoints.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import sys

from .. import HumpbackError, dist, models
from ..config import ModelParams, TrainParams
from ..models import cache_dir, fingerprint
from . import compat

# Optimizer steps between checkpoints (rounded up to a multiple of logging_steps); the default profile's
# 40-step inverse_sft and seed_sft save at 10, 20 and 30, its 12-step finetune at 10. Set
# HUMPBACK_CHECKPOINT_STEPS to change it, 0 for no checkpoints. Not a param: it never changes a result.
CHECKPOINT_STEPS = 10
KEEP_CHECKPOINTS = 2  # the newest may be cut short by a kill; the one before it is then complete
RESUME_DIR = "humpback"  # in each checkpoint, written last: the DVCLive directory and our counters
_PACKAGE = os.path.dirname(os.path.abspath(__file__))


def checkpoint_steps(params: TrainParams) -> int:
    """Optimizer steps between checkpoints (0: none): HUMPBACK_CHECKPOINT_STEPS or CHECKPOINT_STEPS, rounded
    up to a multiple of logging_steps. At a logging step trl's and the Trainer's running sums (loss, token
    count, window averages) have just been logged and reset, so a resumed run logs exactly what an
    uninterrupted one does."""
    raw = os.environ.get("HUMPBACK_CHECKPOINT_STEPS", "").strip()
    try:
        steps = int(raw) if raw else CHECKPOINT_STEPS
    except ValueError:
        raise HumpbackError(f"HUMPBACK_CHECKPOINT_STEPS must be an integer (0: no checkpoints), not {raw!r}") from None
    if steps <= 0:
        return 0
    logging = max(int(params.logging_steps), 1)
    return -(-steps // logging) * logging


def run_key(model: ModelParams, params: TrainParams, train: list[dict], eval: list[dict], output_dir: str,
            live_dir: str, on_gpu: bool) -> str:
    """A hash of everything that determines a training run, and so its checkpoints: the model params and
    base weights, the train params, the examples, where the adapter and DVCLive go, the device and process
    count, the versions of the libraries that train, and the source of this package and models.py."""

    def version(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "none"

    def source(path: str) -> str:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()

    # every module of this package, by file: a module added later is covered without being named here
    package = [os.path.join(_PACKAGE, n) for n in sorted(os.listdir(_PACKAGE)) if n.endswith(".py")]
    h = hashlib.sha256()
    for part in (
        dataclasses.asdict(model),
        fingerprint(model.base, dtype=model.dtype, load_in_4bit=model.load_in_4bit),
        [type(params).__name__, dataclasses.asdict(params)],
        train,
        eval,
        [output_dir, live_dir, on_gpu, dist.world_size()],  # processes: the data each sees
        {d: version(d) for d in ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "dvclive",
                                 "safetensors")},
        [source(p) for p in package] + [source(models.__file__)],
    ):
        h.update(json.dumps(part, sort_keys=True, ensure_ascii=False).encode() + b"\n")
    return h.hexdigest()


@dataclasses.dataclass
class Checkpoint:
    path: str
    step: int
    state: dict  # RESUME_DIR/state.json


class RunDir:
    """`$HUMPBACK_CACHE_DIR/checkpoints/<out>-<key>`: one run's checkpoints, held under an exclusive lock
    (flock, released by the kernel when the process dies, even by SIGKILL)."""

    def __init__(self, path: str, lock):
        self.path, self._lock = path, lock

    @classmethod
    def claim(cls, key: str, output_dir: str, name: str) -> "RunDir | None":
        import fcntl

        root = cache_dir("checkpoints")
        slug = re.sub(r"[^\w.]+", "-", "/".join(os.path.abspath(output_dir).split(os.sep)[-2:])).strip("-")
        path = os.path.join(root, f"{slug}-{key[:20]}")
        # Creating and locking this run's directory, and deleting the stale ones, is one step under a lock on
        # the whole checkpoints root: without it, a parallel run of the same output (queued experiments)
        # could see this directory created but not yet locked, take it for stale and delete it.
        with _root_lock(root):
            os.makedirs(path, exist_ok=True)
            lock = open(os.path.join(path, ".lock"), "a")
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # the same run, in another process (parallel `dvc exp run --queue` jobs)
                lock.close()
                print(f"{name}: {path} is in use by another run of the same training: this one keeps no "
                      "checkpoints", file=sys.stderr)
                return None
            # Checkpoints of this output's earlier inputs can never be resumed (a changed input is a new key):
            # delete those no running process holds.
            for other in os.listdir(root):
                if re.fullmatch(re.escape(slug) + r"-[0-9a-f]{20}", other) and other != os.path.basename(path):
                    cls._remove_if_free(os.path.join(root, other))
        return cls(path, lock)

    @staticmethod
    def _remove_if_free(path: str) -> None:
        """Delete a run's directory unless a process holds it (the caller holds the root lock)."""
        import fcntl

        try:
            with open(os.path.join(path, ".lock"), "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                shutil.rmtree(path, ignore_errors=True)
        except OSError:  # held by a running process, or already gone
            pass

    def last_checkpoint(self) -> Checkpoint | None:
        """The newest complete checkpoint (the Trainer writes trainer_state.json after the weights, optimizer
        and RNG; the `resume_callback` moves RESUME_DIR in after that); incomplete ones are deleted."""
        found = []
        for entry in os.listdir(self.path):
            m = re.fullmatch(r"checkpoint-(\d+)", entry)
            if not m:
                continue
            path = os.path.join(self.path, entry)
            try:
                with open(os.path.join(path, RESUME_DIR, "state.json"), encoding="utf-8") as f:
                    state = json.load(f)
                complete = os.path.isfile(os.path.join(path, "trainer_state.json"))
            except (OSError, ValueError):
                complete = False
            if complete:
                found.append(Checkpoint(path, int(m.group(1)), state))
            else:
                shutil.rmtree(path, ignore_errors=True)
        return max(found, key=lambda c: c.step, default=None)

    def remove(self) -> None:
        with _root_lock(os.path.dirname(self.path)):  # no claim's cleanup recreates .lock in a half-deleted dir
            shutil.rmtree(self.path, ignore_errors=True)
            self._lock.close()


@contextlib.contextmanager
def _root_lock(root: str):
    """An exclusive flock on `<root>.lock` (beside the checkpoints directory, which then holds run directories
    only), held for the few file operations of a claim or removal."""
    import fcntl

    with open(f"{root}.lock", "a") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        yield


def from_main_process(run_path: str | None, resume: Checkpoint | None):
    """The main process's checkpoint directory and checkpoint to resume, in every process."""
    if dist.world_size() <= 1:
        return run_path, resume
    from accelerate.utils import broadcast_object_list

    dist.process_state()  # joins the process group, once
    return tuple(broadcast_object_list([run_path, resume]))


def open_live(live_dir: str, resume: Checkpoint | None):
    """A fresh DVCLive directory, or on resume the one saved in the checkpoint: rows logged after it (before
    the kill) are logged again."""
    from dvclive import Live

    shutil.rmtree(live_dir, ignore_errors=True)
    if resume:
        shutil.copytree(os.path.join(resume.path, RESUME_DIR, "live"), live_dir)
    live = Live(dir=live_dir, dvcyaml=None, save_dvc_exp=False, report=None, resume=bool(resume))
    if resume:
        live.step = resume.state["live_step"]  # Live(resume=True) reads it too, but keeps 0 as 0 (then logs it twice)
    return live


def resume_callback(live, resume: Checkpoint | None):
    """A callback that completes each checkpoint with what the Trainer does not save, and restores it on
    resume: the DVCLive directory so far, the running loss sum behind the final train_loss, and trl's token
    count. Set its `trainer` before training."""
    from transformers import TrainerCallback

    class Checkpoints(TrainerCallback):
        trainer = None

        def on_train_begin(self, args, state, control, **kwargs):
            if not resume:
                return
            if missing := compat.missing_counters(self.trainer):  # another transformers/trl (in the key)
                raise HumpbackError(f"cannot resume from {resume.path} with this transformers/trl (no "
                                    f"{', '.join(missing)}): delete that directory and rerun")
            compat.restore_counters(self.trainer, resume.state["total_loss"], resume.state["train_tokens"])

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step >= state.max_steps:
                control.should_save = False  # the adapter is saved right after the last step anyway

        def on_save(self, args, state, control, **kwargs):
            if live is None:  # not the main process: it saved its RNG state, the main one does the rest
                return
            checkpoint = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            tmp = os.path.join(checkpoint, f"{RESUME_DIR}.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(live.dir, os.path.join(tmp, "live"))
            with open(os.path.join(tmp, "state.json"), "w", encoding="utf-8") as f:
                json.dump({"step": state.global_step, "live_step": live.step, **compat.saved_counters(self.trainer)},
                          f)
            shutil.rmtree(os.path.join(checkpoint, RESUME_DIR), ignore_errors=True)  # a step saved twice
            os.replace(tmp, os.path.join(checkpoint, RESUME_DIR))  # the checkpoint is complete from here on

    return Checkpoints()
