"""What makes a training's outs the same on every machine and every run: the adapter names its base by
its params.yaml reference, a metadata file beside it says what peft's config does not, and DVCLive
records no wall-clock figures and no checkpoint settings."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

from ..config import ModelParams
from ..models import resolve

ADAPTER_METADATA = "humpback.json"  # beside the adapter: its base reference and the resolved model.dtype


def save_adapter(trainer, tokenizer, model: ModelParams, dtype: str, output_dir: str) -> None:
    """Write the trained adapter and the tokenizer to `output_dir`, whole or not at all."""
    tmp = f"{output_dir}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    trainer.accelerator.unwrap_model(trainer.model).save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    name_base_by_reference(tmp, model.base)  # also sorts the config's lists (peft writes sets in hash order)
    with open(os.path.join(tmp, ADAPTER_METADATA), "w", encoding="utf-8") as f:  # what peft's config does not say
        json.dump({"base_model": model.base, "dtype": dtype, "load_in_4bit": model.load_in_4bit}, f,
                  indent=2, sort_keys=True)
        f.write("\n")
    shutil.rmtree(output_dir, ignore_errors=True)
    os.replace(tmp, output_dir)


def name_base_by_reference(adapter_dir: str, ref: str) -> None:
    """peft records the base model as the local directory it was loaded from (a path in the model
    cache). Name it by its params.yaml reference instead, so the adapter's hash is the same on any
    machine and for any HUMPBACK_CACHE_DIR."""
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


def pure_dvclive(live, work_dir: str):
    """DVCLive's Trainer callback without the wall-clock figures (runtime, samples or steps per second):
    they differ on every run, and the DVCLive directory is a DVC out. Losses are rounded to 4 decimals.
    Where and how often checkpoints are written never changes the result, so DVCLive's params.yaml records
    them as a run without checkpoints has them (output_dir `work_dir`): the same directory either way."""
    from transformers.integrations import DVCLiveCallback
    from trl import SFTConfig

    defaults = {f.name: f.default for f in dataclasses.fields(SFTConfig)}
    logged_as = {"output_dir": work_dir, "save_strategy": "no", "save_steps": defaults["save_steps"],
                 "save_total_limit": defaults["save_total_limit"]}

    class PureDVCLiveCallback(DVCLiveCallback):
        def setup(self, args, state, model):
            super().setup(args, state, model)  # logs every training argument
            if state.is_world_process_zero:
                self.live.log_params(logged_as)  # replaces those of checkpoints in params.yaml

        def on_log(self, args, state, control, model=None, logs=None, **kwargs):
            logs = {k: round(v, 4) if isinstance(v, float) else v for k, v in (logs or {}).items()
                    if not k.endswith(("runtime", "per_second"))}
            return super().on_log(args, state, control, model=model, logs=logs, **kwargs)

    return PureDVCLiveCallback(live=live)
