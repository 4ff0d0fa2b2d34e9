"""LoRA supervised fine-tuning with trl's SFTTrainer; both inverse SFT and the final fine-tune use it.

Data are prompt-completion pairs, so trl computes the loss on completion tokens only.

Speed on CPU (benchmarks/bench_train.py, benchmarks/RESULTS.md):
- `model.dtype: auto` computes in bf16 where the device has it natively (AVX512-BF16 or AMX), else fp32;
  see `precision_flags`.
- The LM head runs only at positions that have a label (`compat.lm_head_on_label_positions_only`): a
  prompt's positions are most of an inverse-SFT example and contribute nothing to the loss.
- `packing` (trl BFD packing, padding-free rows with block-diagonal attention) and `group_by_length`
  remove padding; both change which examples share a step, so they are params, off by default.

Crash safety is in checkpoints.py, reproducible outs in repro.py.
"""

from __future__ import annotations

import shutil
import sys

import torch

from .. import HumpbackError, work
from ..config import ModelParams, TrainParams
from ..dist import is_main_process
from ..models import load_model, load_tokenizer, resolve_dtype, torch_dtype
from . import compat
from .checkpoints import (KEEP_CHECKPOINTS, RunDir, checkpoint_steps, from_main_process, open_live,
                          resume_callback, run_key)
from .repro import pure_dvclive, save_adapter


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


def lora_config(params: TrainParams):
    """peft's LoRA config from the train params."""
    from peft import LoraConfig

    return LoraConfig(
        r=params.lora_r,
        lora_alpha=params.lora_alpha,
        lora_dropout=params.lora_dropout,
        target_modules=params.lora_target_modules,
        task_type="CAUSAL_LM",
    )


def sft_config(model: ModelParams, params: TrainParams, output_dir: str, save_steps: int | None, has_eval: bool,
               on_gpu: bool):
    """trl's SFTConfig for a run: a checkpoint every `save_steps` steps in `output_dir` (None: no checkpoints)."""
    from trl import SFTConfig

    return SFTConfig(
        output_dir=output_dir,
        num_train_epochs=params.num_train_epochs,
        max_steps=params.max_steps,
        learning_rate=params.learning_rate,
        per_device_train_batch_size=params.per_device_train_batch_size,
        per_device_eval_batch_size=params.per_device_train_batch_size,
        gradient_accumulation_steps=params.gradient_accumulation_steps,
        max_length=params.max_length,
        logging_steps=params.logging_steps,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=params.eval_steps,
        **({"save_strategy": "steps", "save_steps": save_steps, "save_total_limit": KEEP_CHECKPOINTS}
           if save_steps is not None else {"save_strategy": "no"}),
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
        report_to="none",  # DVCLive is attached in train_lora with our own directory
        disable_tqdm=False,
        dataloader_num_workers=0,
    )


def train_lora(model: ModelParams, params: TrainParams, train: list[dict], eval: list[dict],
               output_dir: str, live_dir: str, name: str = "train") -> dict:
    """Fine-tune `model.base` with LoRA on `train` (records with prompt/completion); write the adapter
    and tokenizer to `output_dir`, loss curves to `live_dir` (DVCLive). Returns train and eval loss."""
    from datasets import Dataset
    from peft import prepare_model_for_kbit_training
    from trl import SFTTrainer

    compat.lm_head_on_label_positions_only()
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
    run = RunDir.claim(key, output_dir, name) if every and main else None
    resume = run.last_checkpoint() if run else None
    run_path, resume = from_main_process(run.path if run else None, resume)
    config = sft_config(model, params, run_path or work_dir, every if run_path else None, bool(eval), on_gpu)
    lora = lora_config(params)
    live, callbacks = None, []
    if main:
        live = open_live(live_dir, resume)
        callbacks.append(pure_dvclive(live, work_dir))
    if run_path:
        callbacks.append(resume_callback(live, resume))
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
    work.add(train=compat.train_tokens(trainer),
             train_eval=evals * sum(len(x["input_ids"]) for x in trainer.eval_dataset) if eval else 0)
    trainer.accelerator.wait_for_everyone()
    if not main:
        return metrics
    live.end()
    save_adapter(trainer, tokenizer, model, metrics["dtype"], output_dir)
    if run:
        run.remove()  # the adapter is in place: the checkpoints are of no more use
    shutil.rmtree(work_dir, ignore_errors=True)
    return metrics
