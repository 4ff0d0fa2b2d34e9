"""LoRA supervised fine-tuning with trl's SFTTrainer; both inverse SFT and the final fine-tune use it.

Data are prompt-completion pairs, so trl computes the loss on completion tokens only.

Speed on CPU (benchmarks/bench_train.py, benchmarks/RESULTS.md):
- `model.dtype: bfloat16` computes in bf16 (native on CPUs with AVX512-BF16 or AMX); see `precision_flags`.
- The LM head runs only at positions that have a label (`_lm_head_on_label_positions_only`): a prompt's
  positions are most of an inverse-SFT example and contribute nothing to the loss.
- `packing` (trl BFD packing, padding-free rows with block-diagonal attention) and `group_by_length`
  remove padding; both change which examples share a step, so they are params, off by default.
"""

from __future__ import annotations

import os
import shutil

import torch

from . import HumpbackError
from .config import ModelParams, TrainParams
from .models import load_model, load_tokenizer, torch_dtype


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
    if on_gpu:
        return {"bf16": torch.cuda.is_bf16_supported(), "fp16": False}
    return {"bf16": torch_dtype(model.dtype) == torch.bfloat16, "fp16": False}


def base_load_dtype(model: ModelParams, on_gpu: bool) -> str:
    """The dtype the base weights are loaded in for training: fp32 under CPU autocast, else model.dtype."""
    if not on_gpu and not model.load_in_4bit and model.dtype == "bfloat16":
        return "float32"
    return model.dtype


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
    work_dir = f"{output_dir}.work"
    config = SFTConfig(
        output_dir=work_dir,
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
        save_strategy="no",
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
    shutil.rmtree(live_dir, ignore_errors=True)
    live = Live(dir=live_dir, dvcyaml=None, save_dvc_exp=False, report=None)
    trainer = SFTTrainer(
        model=base,
        args=config,
        train_dataset=Dataset.from_list(train),
        eval_dataset=Dataset.from_list(eval) if eval else None,
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=[_pure_dvclive(live)],
    )
    # trl drops examples whose prompt alone fills max_length (no completion token left to learn from).
    kept = len(trainer.train_dataset)
    if kept == 0:
        raise HumpbackError(f"{name}: none of {len(train)} examples leaves a completion token within "
                            f"{name}.max_length={params.max_length}; raise it")
    result = trainer.train()
    metrics = {"train_loss": round(result.training_loss, 4), "train_examples": kept,
               "dropped_too_long": len(train) - kept, "steps": result.global_step}
    if eval:
        metrics["eval_loss"] = round(trainer.evaluate()["eval_loss"], 4)
        metrics["eval_examples"] = len(trainer.eval_dataset)
    live.end()

    tmp = f"{output_dir}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    trainer.model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    name_base_by_reference(tmp, model.base)  # also sorts the config's lists (peft writes sets in hash order)
    shutil.rmtree(output_dir, ignore_errors=True)
    os.replace(tmp, output_dir)
    shutil.rmtree(work_dir, ignore_errors=True)
    return metrics


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


def _pure_dvclive(live):
    """DVCLive's Trainer callback without the wall-clock figures (runtime, samples or steps per second):
    they differ on every run, and the DVCLive directory is a DVC out. Losses are rounded to 4 decimals."""
    from transformers.integrations import DVCLiveCallback

    class PureDVCLiveCallback(DVCLiveCallback):
        def on_log(self, args, state, control, model=None, logs=None, **kwargs):
            logs = {k: round(v, 4) if isinstance(v, float) else v for k, v in (logs or {}).items()
                    if not k.endswith(("runtime", "per_second"))}
            return super().on_log(args, state, control, model=model, logs=logs, **kwargs)

    return PureDVCLiveCallback(live=live)
