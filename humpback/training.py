"""LoRA supervised fine-tuning with trl's SFTTrainer; both inverse SFT and the final fine-tune use it.

Data are prompt-completion pairs, so trl computes the loss on completion tokens only.

Speed on CPU (benchmarks/bench_train.py, benchmarks/RESULTS.md):
- `model.dtype: auto` computes in bf16 where the device has it natively (AVX512-BF16 or AMX), else fp32;
  see `precision_flags`.
- The LM head runs only at positions that have a label (`_lm_head_on_label_positions_only`): a prompt's
  positions are most of an inverse-SFT example and contribute nothing to the loss.
- `packing` (trl BFD packing, padding-free rows with block-diagonal attention) and `group_by_length`
  remove padding; both change which examples share a step, so they are params, off by default.

Crash safety: a run keeps checkpoints (adapter, optimizer, scheduler, RNG, trainer state and the DVCLive
directory so far) every `checkpoint_steps` optimizer steps in `$HUMPBACK_CACHE_DIR/checkpoints/`, keyed by
everything that determines the run (`run_key`). A rerun after a kill resumes from the last complete one
and gives the adapter, metrics and DVCLive output of an uninterrupted run (tests/test_resume.py); a
changed input gives another key, so it never resumes a stale run. A successful run deletes its checkpoints.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
import sys

import torch

from . import HumpbackError, dist, work
from .config import ModelParams, TrainParams
from .models import cache_dir, fingerprint, load_model, load_tokenizer, resolve_dtype, torch_dtype
from .dist import is_main_process

# Optimizer steps between checkpoints (rounded up to a multiple of logging_steps); the default profile's
# 40-step inverse_sft and seed_sft save at 10, 20 and 30, its 12-step finetune at 10. Set
# HUMPBACK_CHECKPOINT_STEPS to change it, 0 for no checkpoints. Not a param: it never changes a result.
CHECKPOINT_STEPS = 10
KEEP_CHECKPOINTS = 2  # the newest may be cut short by a kill; the one before it is then complete
ADAPTER_METADATA = "humpback.json"  # beside the adapter: its base reference and the resolved model.dtype
_RESUME_DIR = "humpback"  # in each checkpoint, written last: the DVCLive directory and our counters


def _lm_head_on_label_positions_only() -> None:
    """Make trl's fused LM head score only the positions whose next-token label is not -100, on CPU too.

    trl (1.x) gathers the labelled positions before its chunked log-softmax only on Triton devices, where a
    varying number of positions would recompile kernels; elsewhere it projects every position through the
    LM head and zeroes the ignored ones afterwards. On CPU nothing recompiles, and an inverse-SFT example is
    ~90% prompt, so the LM head (a fifth of the model's FLOPs, plus a softmax over 49k logits per position)
    ran mostly for nothing. The compact path computes the same per-token values for the labelled positions
    (tests/test_training_speed_opts.py). Only the `compact` switch in trl.trainer.utils is changed: the
    kernels module keeps its own `_use_triton`, so the torch (not Triton) kernels still run on CPU.
    """
    try:
        import trl.trainer.utils as trl_utils
    except ImportError:
        return
    original = getattr(trl_utils, "_use_triton", None)
    if original is None or getattr(original, "_humpback_compact", False):
        return  # another trl layout (nothing to do), or already patched

    def compact(device) -> bool:
        return torch.device(device).type == "cpu" or original(device)

    compact._humpback_compact = True
    compact._humpback_original = original
    trl_utils._use_triton = compact


def precision_flags(model: ModelParams, on_gpu: bool) -> dict:
    """SFTConfig precision flags for `model.dtype` (the dtype the model computes in, recorded in params.yaml).

    On CPU, bfloat16 is trl/accelerate's CPU autocast (`bf16=True, use_cpu=True`): fp32 weights, residual
    stream and norms, matmuls in bf16; the LoRA weights, their gradients, the optimizer state and the saved
    adapter stay fp32. Loading the base weights in bf16 instead measured the same speed (benchmarks/RESULTS.md)
    and rounds more. float32 computes in fp32. On GPU, bf16 autocast where supported, as before.
    """
    dtype = torch_dtype(model.dtype)
    return {"bf16": dtype == torch.bfloat16, "fp16": on_gpu and dtype == torch.float16}


def base_load_dtype(model: ModelParams, on_gpu: bool) -> str:
    """The dtype the base weights are loaded in for training: fp32 under CPU autocast, else model.dtype."""
    dtype = resolve_dtype(model.dtype)
    if not on_gpu and not model.load_in_4bit and dtype == "bfloat16":
        return "float32"
    return dtype


def train_lora(model: ModelParams, params: TrainParams, train: list[dict], eval: list[dict],
               output_dir: str, live_dir: str, name: str = "train") -> dict:
    """Fine-tune `model.base` with LoRA on `train` (records with prompt/completion); write the adapter
    and tokenizer to `output_dir`, loss curves to `live_dir` (DVCLive). Returns train and eval loss."""
    from datasets import Dataset
    from dvclive import Live
    from peft import LoraConfig, prepare_model_for_kbit_training
    from trl import SFTConfig, SFTTrainer

    _lm_head_on_label_positions_only()
    tokenizer = load_tokenizer(model.base, padding_side="right")
    on_gpu = torch.cuda.is_available()
    base = load_model(model.base, load_in_4bit=model.load_in_4bit, dtype=base_load_dtype(model, on_gpu))
    if model.load_in_4bit:  # QLoRA
        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=on_gpu)
    work_dir = f"{output_dir}.work"  # the Trainer's output_dir without checkpoints (DVCLive's params name it always)
    every = checkpoint_steps(params)
    # Under `accelerate launch` (DDP) every process trains; the main one owns the checkpoint directory,
    # DVCLive and the saved adapter, and tells the others where the run's checkpoints are.
    main = is_main_process()
    key = run_key(model, params, train, eval, output_dir, live_dir, on_gpu) if every else None
    run = _RunDir.claim(key, output_dir, name) if every and main else None
    resume = run.last_checkpoint() if run else None
    run_path, resume = _from_main_process(run.path if run else None, resume)
    config = SFTConfig(
        output_dir=run_path or work_dir,
        num_train_epochs=params.num_train_epochs,
        max_steps=params.max_steps,
        learning_rate=params.learning_rate,
        per_device_train_batch_size=params.per_device_train_batch_size,
        per_device_eval_batch_size=params.per_device_train_batch_size,
        gradient_accumulation_steps=params.gradient_accumulation_steps,
        max_length=params.max_length,
        logging_steps=params.logging_steps,
        eval_strategy="steps" if eval else "no",
        eval_steps=params.eval_steps,
        **({"save_strategy": "steps", "save_steps": every, "save_total_limit": KEEP_CHECKPOINTS} if run_path
           else {"save_strategy": "no"}),
        seed=params.seed,
        data_seed=params.seed,
        # trl defaults to bf16 autocast and gradient checkpointing: on CPU the dtype is model.dtype's
        # (precision_flags), and checkpointing would only recompute activations that fit in memory.
        **precision_flags(model, on_gpu),
        gradient_checkpointing=on_gpu,
        # Padding removal: both change which examples share a step (so the result), hence params.
        packing=params.packing,  # BFD: padding-free rows, position_ids, block-diagonal attention
        **({"train_sampling_strategy": "group_by_length"} if params.group_by_length else {}),
        use_cpu=not on_gpu,
        report_to="none",  # DVCLive is attached below with our own directory
        disable_tqdm=False,
        dataloader_num_workers=0,
    )
    lora = LoraConfig(
        r=params.lora_r,
        lora_alpha=params.lora_alpha,
        lora_dropout=params.lora_dropout,
        target_modules=params.lora_target_modules,
        task_type="CAUSAL_LM",
    )
    live, callbacks = None, []
    if main:
        shutil.rmtree(live_dir, ignore_errors=True)
        if resume:  # DVCLive as it was at the checkpoint: rows logged after it (before the kill) are logged again
            shutil.copytree(os.path.join(resume.path, _RESUME_DIR, "live"), live_dir)
        live = Live(dir=live_dir, dvcyaml=None, save_dvc_exp=False, report=None, resume=bool(resume))
        if resume:
            live.step = resume.state["live_step"]  # Live(resume=True) reads it too, but keeps 0 as 0 (then logs it twice)
        # Where and how often checkpoints are written never changes the result: DVCLive's params record them
        # as in a run without checkpoints, so its directory is the same with or without them.
        defaults = {f.name: f.default for f in dataclasses.fields(SFTConfig)}
        logged_as = {"output_dir": work_dir, "save_strategy": "no", "save_steps": defaults["save_steps"],
                     "save_total_limit": defaults["save_total_limit"]}
        callbacks.append(_pure_dvclive(live, logged_as))
    if run_path:
        callbacks.append(_checkpoints(live, resume))
    trainer = SFTTrainer(
        model=base,
        args=config,
        train_dataset=Dataset.from_list(train),
        eval_dataset=Dataset.from_list(eval) if eval else None,
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=callbacks,
    )
    if run_path:
        callbacks[-1].trainer = trainer
    # trl drops examples whose prompt alone fills max_length (no completion token left to learn from).
    kept = len(trainer.train_dataset)
    if kept == 0:
        raise HumpbackError(f"{name}: none of {len(train)} examples leaves a completion token within "
                            f"{name}.max_length={params.max_length}; raise it")
    if resume:
        print(f"{name}: resuming from step {resume.step} ({resume.path})", file=sys.stderr)
    result = trainer.train(resume_from_checkpoint=resume.path if resume else None)
    metrics = {"dtype": resolve_dtype(model.dtype), "train_loss": round(result.training_loss, 4), "train_examples": kept,
               "dropped_too_long": len(train) - kept, "steps": result.global_step}
    if eval:
        last = next((h for h in reversed(trainer.state.log_history) if "eval_loss" in h), None)
        if last is None or last["step"] != result.global_step:  # else the last step's evaluation is this one
            last = trainer.evaluate()
        metrics["eval_loss"] = round(last["eval_loss"], 4)
        metrics["eval_examples"] = len(trainer.eval_dataset)
    evals = sum("eval_loss" in h for h in trainer.state.log_history)
    work.add(train=getattr(trainer, "_total_train_tokens", 0),
             train_eval=evals * sum(len(x["input_ids"]) for x in trainer.eval_dataset) if eval else 0)
    trainer.accelerator.wait_for_everyone()
    if not main:
        return metrics
    live.end()

    tmp = f"{output_dir}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    trainer.accelerator.unwrap_model(trainer.model).save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    name_base_by_reference(tmp, model.base)  # also sorts the config's lists (peft writes sets in hash order)
    with open(os.path.join(tmp, ADAPTER_METADATA), "w", encoding="utf-8") as f:  # what peft's config does not say
        json.dump({"base_model": model.base, "dtype": metrics["dtype"], "load_in_4bit": model.load_in_4bit}, f,
                  indent=2, sort_keys=True)
        f.write("\n")
    shutil.rmtree(output_dir, ignore_errors=True)
    os.replace(tmp, output_dir)
    if run:
        run.remove()  # the adapter is in place: the checkpoints are of no more use
    shutil.rmtree(work_dir, ignore_errors=True)
    return metrics


def _from_main_process(run_path: str | None, resume: "_Checkpoint | None"):
    """The main process's checkpoint directory and checkpoint to resume, in every process."""
    if dist.world_size() <= 1:
        return run_path, resume
    from accelerate.utils import broadcast_object_list

    dist.process_state()  # joins the process group, once
    return tuple(broadcast_object_list([run_path, resume]))


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
    count, the versions of the libraries that train, and this module's and models.py's source."""
    import importlib.metadata

    from . import models

    def version(dist: str) -> str:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return "none"

    def source(module) -> str:
        with open(module.__file__, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()

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
        [source(sys.modules[__name__]), source(models)],
    ):
        h.update(json.dumps(part, sort_keys=True, ensure_ascii=False).encode() + b"\n")
    return h.hexdigest()


@dataclasses.dataclass
class _Checkpoint:
    path: str
    step: int
    state: dict  # _RESUME_DIR/state.json


class _RunDir:
    """`$HUMPBACK_CACHE_DIR/checkpoints/<out>-<key>`: one run's checkpoints, held under an exclusive lock
    (flock, released by the kernel when the process dies, even by SIGKILL)."""

    def __init__(self, path: str, lock):
        self.path, self._lock = path, lock

    @classmethod
    def claim(cls, key: str, output_dir: str, name: str) -> "_RunDir | None":
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

    def last_checkpoint(self) -> _Checkpoint | None:
        """The newest complete checkpoint (the Trainer writes trainer_state.json after the weights, optimizer
        and RNG; the `_checkpoints` callback moves _RESUME_DIR in after that); incomplete ones are deleted."""
        found = []
        for entry in os.listdir(self.path):
            m = re.fullmatch(r"checkpoint-(\d+)", entry)
            if not m:
                continue
            path = os.path.join(self.path, entry)
            try:
                with open(os.path.join(path, _RESUME_DIR, "state.json"), encoding="utf-8") as f:
                    state = json.load(f)
                complete = os.path.isfile(os.path.join(path, "trainer_state.json"))
            except (OSError, ValueError):
                complete = False
            if complete:
                found.append(_Checkpoint(path, int(m.group(1)), state))
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


def _checkpoints(live, resume: _Checkpoint | None):
    """A callback that completes each checkpoint with what the Trainer does not save, and restores it on
    resume: the DVCLive directory so far, the running loss sum behind the final train_loss, and trl's token
    count. Set its `trainer` before training."""
    from transformers import TrainerCallback

    class Checkpoints(TrainerCallback):
        trainer = None

        def on_train_begin(self, args, state, control, **kwargs):
            if not resume:
                return
            t = self.trainer
            names = ("_total_loss_scalar", "_initial_global_step", "_total_train_tokens")
            if missing := [a for a in names if not hasattr(t, a)]:  # another transformers/trl (in the key)
                raise HumpbackError(f"cannot resume from {resume.path} with this transformers/trl (no "
                                    f"{', '.join(missing)}): delete that directory and rerun")
            # The Trainer restarts these at 0 on resume; an uninterrupted run would have counted from step 0.
            t._total_loss_scalar = resume.state["total_loss"]
            t._initial_global_step = 0
            t._total_train_tokens = resume.state["train_tokens"]

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step >= state.max_steps:
                control.should_save = False  # the adapter is saved right after the last step anyway

        def on_save(self, args, state, control, **kwargs):
            if live is None:  # not the main process: it saved its RNG state, the main one does the rest
                return
            t = self.trainer
            checkpoint = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            tmp = os.path.join(checkpoint, f"{_RESUME_DIR}.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(live.dir, os.path.join(tmp, "live"))
            with open(os.path.join(tmp, "state.json"), "w", encoding="utf-8") as f:
                json.dump({"step": state.global_step, "live_step": live.step,
                           "total_loss": t._total_loss_scalar + t._tr_loss.item(),
                           "train_tokens": t._total_train_tokens}, f)
            shutil.rmtree(os.path.join(checkpoint, _RESUME_DIR), ignore_errors=True)  # a step saved twice
            os.replace(tmp, os.path.join(checkpoint, _RESUME_DIR))  # the checkpoint is complete from here on

    return Checkpoints()


def name_base_by_reference(adapter_dir: str, ref: str) -> None:
    """peft records the base model as the local directory it was loaded from (a path in the model
    cache). Name it by its params.yaml reference instead, so the adapter's hash is the same on any
    machine and for any HUMPBACK_CACHE_DIR."""
    import json

    from .models import resolve

    local = resolve(ref)
    for name in os.listdir(adapter_dir):
        path = os.path.join(adapter_dir, name)
        if name == "adapter_config.json":
            with open(path, encoding="utf-8") as f:
                config = json.load(f)
            config["base_model_name_or_path"] = ref
            # target_modules is a set in peft: its order in the file follows the string hash seed
            config = {k: sorted(v) if k == "target_modules" and isinstance(v, list) else v for k, v in config.items()}
            with open(path, "w", encoding="utf-8") as f:
                json.dump(config, f, indent=2, sort_keys=True)
                f.write("\n")
        elif name.endswith(".md") and local != ref:  # peft's model card names the base model too
            with open(path, encoding="utf-8") as f:
                text = f.read()
            with open(path, "w", encoding="utf-8") as f:
                f.write(text.replace(local, ref))


def _pure_dvclive(live, logged_as: dict | None = None):
    """DVCLive's Trainer callback without the wall-clock figures (runtime, samples or steps per second):
    they differ on every run, and the DVCLive directory is a DVC out. Losses are rounded to 4 decimals.
    `logged_as` replaces some of the training arguments in DVCLive's params.yaml."""
    from transformers.integrations import DVCLiveCallback

    class PureDVCLiveCallback(DVCLiveCallback):
        def setup(self, args, state, model):
            self._initialized = True
            if state.is_world_process_zero:
                self.live.log_params({**args.to_dict(), **(logged_as or {})})

        def on_log(self, args, state, control, model=None, logs=None, **kwargs):
            logs = {k: round(v, 4) if isinstance(v, float) else v for k, v in (logs or {}).items()
                    if not k.endswith(("runtime", "per_second"))}
            return super().on_log(args, state, control, model=model, logs=logs, **kwargs)

    return PureDVCLiveCallback(live=live)
