"""The private names of trl and the transformers Trainer that humpback/training/compat.py relies on are
still there in the installed versions, and no other module uses one.

A failure names the attribute that moved: follow it in compat.py (and say so in the run key's versions,
which they are already part of)."""

from __future__ import annotations

import glob
import importlib.metadata
import os
import re
import types

import pytest

from humpback.training import compat

VERSIONS = ", ".join(f"{d} {importlib.metadata.version(d)}" for d in ("transformers", "trl", "dvclive"))


def _code_objects(code: types.CodeType):
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _code_objects(const)


def test_trl_still_reads_the_compact_lm_head_switch():
    import trl.trainer.utils as trl_utils

    name = compat.TRL_COMPACT_SWITCH
    assert callable(getattr(trl_utils, name, None)), f"{VERSIONS}: trl.trainer.utils.{name} is gone"
    # the fused LM head looks the switch up in trl.trainer.utils when it runs: replacing it there takes effect
    readers = [c.co_qualname for f in vars(trl_utils).values() if isinstance(f, types.FunctionType)
               and f.__module__ == trl_utils.__name__ for c in _code_objects(f.__code__) if name in c.co_names]
    assert any("forward" in r for r in readers), f"{VERSIONS}: no function of trl.trainer.utils reads {name} " \
                                                 f"at call time any more (only {readers})"


def test_the_trainer_still_keeps_the_running_sums_a_resume_restores(tiny_model):
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from humpback.models import load_model, load_tokenizer

    seen = {}

    class Probe(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            seen["begin"] = compat.missing_counters(trainer)

        def on_step_end(self, args, state, control, **kwargs):
            seen["step"] = compat.missing_counters(trainer) + [
                a for a in [compat.RUNNING_LOSS] if not isinstance(getattr(trainer, a, None), torch.Tensor)]
            seen["saved"] = compat.saved_counters(trainer)

    examples = [{"prompt": f"question {i}?", "completion": f" answer {i}."} for i in range(4)]
    args = SFTConfig(output_dir="/tmp/unused-compat-out", max_steps=1, per_device_train_batch_size=2, max_length=32,
                     use_cpu=True, bf16=False, report_to="none", save_strategy="no", disable_tqdm=True)
    trainer = SFTTrainer(model=load_model(tiny_model), args=args, train_dataset=Dataset.from_list(examples),
                         processing_class=load_tokenizer(tiny_model, padding_side="right"), callbacks=[Probe()])
    trainer.train()
    assert seen["begin"] == [], f"{VERSIONS}: the Trainer has no {', '.join(seen['begin'])} when training begins"
    assert seen["step"] == [], f"{VERSIONS}: the Trainer has no {', '.join(seen['step'])} after a step"
    assert seen["saved"]["train_tokens"] > 0 and seen["saved"]["total_loss"] > 0, seen["saved"]
    assert compat.train_tokens(trainer) == seen["saved"]["train_tokens"]


def test_no_other_module_uses_a_private_name_of_the_libraries(repo_root):
    names = [compat.TRL_COMPACT_SWITCH, *compat.RESUMED_COUNTERS, compat.RUNNING_LOSS, "_initialized"]
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, names)) + r")\b")
    found = []
    for path in glob.glob(os.path.join(repo_root, "humpback", "**", "*.py"), recursive=True):
        if os.path.samefile(path, compat.__file__):
            continue
        with open(path, encoding="utf-8") as f:
            found += [f"{os.path.relpath(path, repo_root)}:{i}: {m.group(1)}" for i, line in enumerate(f, 1)
                      for m in pattern.finditer(line)]
    assert found == [], "private library names outside humpback/training/compat.py:\n" + "\n".join(found)


def test_dvclive_params_are_those_of_a_run_without_checkpoints(tmp_path):
    """The pure callback extends DVCLive's public `setup`: params.yaml is the training arguments with the
    checkpoint settings as a run without checkpoints has them, byte for byte as one log_params call writes."""
    from dvclive import Live
    from transformers import TrainerState
    from trl import SFTConfig

    from humpback.training.repro import pure_dvclive

    args = SFTConfig(output_dir=str(tmp_path / "run"), save_strategy="steps", save_steps=3, save_total_limit=2,
                     use_cpu=True, report_to="none")
    live = Live(dir=str(tmp_path / "live"), dvcyaml=None, save_dvc_exp=False, report=None)
    pure_dvclive(live, "models/a.work").setup(args, TrainerState(), None)
    defaults = SFTConfig(output_dir="models/a.work", use_cpu=True, report_to="none")
    one_call = Live(dir=str(tmp_path / "one"), dvcyaml=None, save_dvc_exp=False, report=None)
    one_call.log_params({**args.to_dict(), "output_dir": "models/a.work", "save_strategy": "no",
                         "save_steps": defaults.save_steps, "save_total_limit": defaults.save_total_limit})
    with open(live.params_file, "rb") as a, open(one_call.params_file, "rb") as b:
        assert a.read() == b.read()


@pytest.mark.parametrize("logs,kept", [({"loss": 1.234567, "train_runtime": 3.0, "train_samples_per_second": 2.0},
                                         {"loss": 1.2346})])
def test_dvclive_logs_no_wall_clock_figures(tmp_path, logs, kept):
    from dvclive import Live
    from transformers import TrainerControl, TrainerState
    from trl import SFTConfig

    from humpback.training.repro import pure_dvclive

    args = SFTConfig(output_dir=str(tmp_path / "run"), use_cpu=True, report_to="none")
    live = Live(dir=str(tmp_path / "live"), dvcyaml=None, save_dvc_exp=False, report=None)
    callback = pure_dvclive(live, "w")
    callback.on_log(args, TrainerState(), TrainerControl(), logs=logs)
    metrics = {os.path.relpath(p, os.path.join(live.plots_dir, "metrics")).removesuffix(".tsv")
               for p in glob.glob(os.path.join(live.plots_dir, "metrics", "**", "*.tsv"), recursive=True)}
    assert metrics == set(kept)
    with open(os.path.join(live.plots_dir, "metrics", "loss.tsv")) as f:
        assert f.read().splitlines()[1].split("\t")[-1] == str(kept["loss"])
