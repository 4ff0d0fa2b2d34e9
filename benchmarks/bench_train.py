"""How fast is one LoRA SFT step (inverse_sft's), per precision and batching method, against this CPU's matmul peak?

Each method is a real `SFTTrainer` (trl's dataset preparation, collator, fused LM head and loss, accelerate's
autocast, AdamW on the LoRA weights, the linear schedule), stepped by hand so that the methods can take
turns: in every round each method runs `--round` steps, in a rotated order, and a matmul benchmark of the
model's own shapes runs between rounds. Load from other jobs on the machine therefore falls on all methods
alike; compare methods by the ratios within one run, never across runs.

Methods (`--methods`, comma-separated names `<precision>[-pack|-group][-fullhead]`):
  fp32            fp32 weights and compute
  bf16            base weights loaded in bf16, LoRA weights/grads/optimizer in fp32, no autocast
  bf16amp         fp32 weights, SFTConfig(bf16=True, use_cpu=True): CPU autocast, matmuls in bf16
                  (what train_lora does for model.dtype: bfloat16)
  -pack           trl packing=True (BFD, padding-free: one row, position_ids, block-diagonal attention)
  -group          padded, train_sampling_strategy="group_by_length" (batches of similar lengths)
  -nodrop         lora_dropout 0 instead of 0.05 (params.yaml): peft then skips the dropout entirely
  -fullhead       trl's fused LM head scores every position (trl's CPU default, and training.py before);
                  without it only labelled positions go through the LM head, as train_lora does now
  Without -pack/-group: padded batches in random order. `fp32-fullhead` is what training.py did before.

FLOPs per step (stated in the report): 4 * N_frozen * T  (forward 2*N*T, backward of activations only
through frozen weights 2*N*T) + 6 * N_lora * T + 6 * layers * hidden * sum(len_i^2) (causal attention:
QK^T and AV forward 2*l^2*d per layer, backward twice that). T counts real tokens only (no padding),
N_frozen includes the LM head (tied embeddings), not the embedding lookup.

The packing check runs one packed batch of real examples through the model in fp32 and compares each
example's mean completion loss with the same example run alone.

    PYTHONPATH=. python benchmarks/bench_train.py --rounds 4 --round 2
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import statistics
import sys
import time


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="model reference (default: ModelParams().base)")
    ap.add_argument("--methods", default="fp32-fullhead,fp32,bf16amp,bf16,bf16-group,bf16-pack",
                    help="comma-separated; see method() for the names. The first one with fp32 is the baseline")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--round", type=int, default=2, help="steps per method per round")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps per method before the rounds")
    ap.add_argument("--batch-size", type=int, default=4, help="rows per step (params.yaml inverse_sft: 4)")
    ap.add_argument("--pack-batch-size", type=int, default=0,
                    help="rows per step for the packed methods (0: --batch-size)")
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--max-response-tokens", type=int, default=160)
    ap.add_argument("--check-examples", type=int, default=8, help="examples in the packing check (0: skip)")
    ap.add_argument("--out", help="also write the report to this file")
    return ap.parse_args()


ARGS = parse_args()
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DATASETS_VERBOSITY", "error")

import torch  # noqa: E402

from humpback import formats, models, prompts  # noqa: E402
from humpback.config import ModelParams, TrainParams  # noqa: E402
import trl.trainer.utils as trl_utils  # noqa: E402

from humpback.training import compat  # noqa: E402

ORIGINAL_USE_TRITON = trl_utils._use_triton
compat.lm_head_on_label_positions_only()  # what train_lora does; toggled per method below
COMPACT = trl_utils._use_triton

LINES: list[str] = []
LOADS: list[float] = []


def out(line: str = "") -> None:
    LINES.append(line)
    print(line, flush=True)


def load1() -> float:
    LOADS.append(os.getloadavg()[0])
    return LOADS[-1]


from machine import cpu_model, matmul_peak  # noqa: E402



# ---------------------------------------------------------------- the methods

def method(name: str) -> dict:
    """`<precision>[-pack|-group][-fullhead]`: precision fp32 | bf16 (bf16 weights, fp32 LoRA: what
    train_lora did for model.dtype=bfloat16) | bf16amp (fp32 weights, SFTConfig(bf16=True) autocast)."""
    parts = name.split("-")
    if parts[0] not in ("fp32", "bf16", "bf16amp") or not set(parts[1:]) <= {"pack", "group", "fullhead", "nodrop"}:
        raise SystemExit(f"unknown method {name!r}")
    return dict(dtype="bfloat16" if parts[0] == "bf16" else "float32", bf16=parts[0] == "bf16amp",
                pack="pack" in parts, group="group" in parts, compact="fullhead" not in parts,
                lora_dropout=0.0 if "nodrop" in parts else None,
                compute="float32" if parts[0] == "fp32" else "bfloat16")


def make_trainer(ref: str, name: str, train: list[dict], tp: TrainParams, batch_size: int, max_steps: int):
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    m = method(name)
    tok = models.load_tokenizer(ref, padding_side="right")
    base = models.load_model(ref, dtype=m["dtype"])
    extra = {"train_sampling_strategy": "group_by_length"} if m["group"] else {}
    config = SFTConfig(
        output_dir=f"/tmp/bench_train_{os.getpid()}_{name}", max_steps=max_steps, learning_rate=tp.learning_rate,
        per_device_train_batch_size=batch_size, max_length=tp.max_length, save_strategy="no", seed=tp.seed,
        data_seed=tp.seed, bf16=m["bf16"], fp16=False, gradient_checkpointing=False, use_cpu=True,
        report_to="none", dataloader_num_workers=0, packing=m["pack"], **extra,
    )
    dropout = tp.lora_dropout if m["lora_dropout"] is None else m["lora_dropout"]
    lora = LoraConfig(r=tp.lora_r, lora_alpha=tp.lora_alpha, lora_dropout=dropout,
                      target_modules=tp.lora_target_modules, task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=base, args=config, train_dataset=Dataset.from_list(train), processing_class=tok,
                         peft_config=lora)
    return trainer


class Runner:
    """Steps one trainer by hand: the body of Trainer's inner loop for one micro-batch per step."""

    def __init__(self, name: str, trainer, max_steps: int):
        self.name, self.trainer = name, trainer
        trainer.create_optimizer_and_scheduler(num_training_steps=max_steps)
        self.model = trainer.accelerator.prepare(trainer.model)  # wraps forward in autocast when bf16=True
        trainer.model_wrapped = self.model
        trainer.current_gradient_accumulation_steps = 1
        self.loader = trainer.get_train_dataloader()
        self.it = iter(self.loader)
        self.n_lora = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        self.times: list[float] = []
        self.tokens: list[int] = []  # real tokens per timed step
        self.computed: list[int] = []  # tokens computed, padding included
        self.sumsq: list[int] = []  # sum of squared sequence lengths (attention FLOPs)
        self.losses: list[float] = []
        self.cpu: list[float] = []  # process CPU seconds per timed step
        self.adjacent_peak: list[float] = []  # matmul peak of the method's dtype, just before and after each step
        self.weight_dtype = next(p for p in self.model.parameters() if not p.requires_grad).dtype
        self.lora_dtype = next(p for p in self.model.parameters() if p.requires_grad).dtype

    def _batch(self):
        try:
            return next(self.it)
        except StopIteration:
            self.it = iter(self.loader)
            return next(self.it)

    def step(self, timed: bool = True) -> None:
        trl_utils._use_triton = COMPACT if method(self.name)["compact"] else ORIGINAL_USE_TRITON
        batch = self._batch()
        if "attention_mask" in batch:
            lens = batch["attention_mask"].sum(-1).tolist()
            computed = batch["attention_mask"].numel()
        else:
            pos = batch["position_ids"][0]
            starts = (pos == 0).nonzero().flatten().tolist() + [len(pos)]
            lens = [e - s for s, e in zip(starts, starts[1:])]
            computed = pos.numel()
        dtype = getattr(torch, method(self.name)["compute"])
        config = self.model.config
        peak_before = matmul_peak(config, dtype, reps=2) if timed else 0.0
        t, c = time.perf_counter(), time.process_time()
        loss = self.trainer.training_step(self.model, batch)
        torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], 1.0)
        self.trainer.optimizer.step()
        self.trainer.lr_scheduler.step()
        self.model.zero_grad(set_to_none=True)
        elapsed, cpu = time.perf_counter() - t, time.process_time() - c
        self.losses.append(loss.item())
        if timed:
            self.adjacent_peak.append((peak_before + matmul_peak(config, dtype, reps=2)) / 2)
            self.cpu.append(cpu)
            self.times.append(elapsed)
            self.tokens.append(sum(lens))
            self.computed.append(computed)
            self.sumsq.append(sum(n * n for n in lens))


def step_flops(config, n_frozen: int, n_lora: int, tokens: int, sumsq: int) -> float:
    return 4 * n_frozen * tokens + 6 * n_lora * tokens + 6 * config.num_hidden_layers * config.hidden_size * sumsq


# ---------------------------------------------------------------- packing correctness

def per_example_losses(model, batch) -> list[float]:
    keys = ("input_ids", "attention_mask", "position_ids")
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k in keys}).logits.float()
    labels = batch["labels"]
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=-100,
                                            reduction="none")
    spans = []
    if "attention_mask" in batch:
        spans = [(r, 0, int(batch["attention_mask"][r].sum())) for r in range(labels.shape[0])]
    elif "position_ids" in batch:
        pos = batch["position_ids"][0]
        starts = (pos == 0).nonzero().flatten().tolist() + [len(pos)]
        spans = [(0, s, e) for s, e in zip(starts, starts[1:])]
    else:  # one unpadded sequence per row
        spans = [(r, 0, labels.shape[1]) for r in range(labels.shape[0])]
    result = []
    for r, s, e in spans:
        mask = labels[r, s + 1 : e] != -100
        result.append((nll[r, s : e - 1][mask].sum() / mask.sum()).item())
    return result


def packing_check(ref: str, train: list[dict], tp: TrainParams, n: int) -> tuple[int, float]:
    """One packed fp32 batch of `n` examples vs each example alone: (examples compared, max |difference|)."""
    trl_utils._use_triton = COMPACT
    trainer = make_trainer(ref, "fp32-pack", train[:n], tp, batch_size=n, max_steps=1)
    model = trainer.model.eval()
    batch = next(iter(trainer.get_train_dataloader()))
    packed = per_example_losses(model, batch)
    pos = batch["position_ids"][0]
    starts = (pos == 0).nonzero().flatten().tolist() + [len(pos)]
    alone = []
    for s, e in zip(starts, starts[1:]):
        alone += per_example_losses(model, {"input_ids": batch["input_ids"][:, s:e], "labels": batch["labels"][:, s:e]})
    pack_diff = max(abs(a - b) for a, b in zip(packed, alone))
    # the compact LM head (labelled positions only) vs trl's CPU default (every position), same batch
    fused = {}
    for mode, fn in (("full", ORIGINAL_USE_TRITON), ("compact", COMPACT)):
        trl_utils._use_triton = fn
        with torch.no_grad():
            fused[mode] = model(**batch, fused_lm_head=True)
    head_diff = (fused["full"].log_probs - fused["compact"].log_probs).abs().max().item()
    return len(alone), pack_diff, head_diff


# ---------------------------------------------------------------- main

def main():
    ref = ARGS.model or ModelParams().base
    tp = TrainParams(max_length=ARGS.max_length, max_response_tokens=ARGS.max_response_tokens,
                     learning_rate=3e-4, per_device_train_batch_size=ARGS.batch_size)
    pairs = formats.parse_guanaco(formats.read_jsonl("data/raw/guanaco.jsonl"), formats.ParseReport())
    tok = models.load_tokenizer(ref)
    examples = [prompts.backward_example(p, tok, tp.max_response_tokens) for p in pairs]
    train = examples[16:]  # params.yaml inverse_sft.eval_size: 16
    methods = ARGS.methods.split(",")
    steps = ARGS.warmup + ARGS.rounds * ARGS.round
    load_before = os.getloadavg()

    out(f"## Training step benchmark, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    out()
    out(f"Command: `PYTHONPATH=. python {' '.join(shlex.quote(a) for a in sys.argv)}` (run from the repo root)")
    out()
    out(f"CPU: {cpu_model()}; {os.cpu_count()} CPUs, torch {torch.__version__} with {torch.get_num_threads()} "
        f"threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}. Model: {ref}. "
        f"Data: inverse_sft examples (Guanaco seed pairs, max_response_tokens={tp.max_response_tokens}), "
        f"max_length={tp.max_length}, batch {ARGS.batch_size} rows (packed: {ARGS.pack_batch_size or ARGS.batch_size}), "
        f"LoRA r={tp.lora_r} on {','.join(tp.lora_target_modules)}.")
    out()

    check = None
    if ARGS.check_examples:
        check = packing_check(ref, train, tp, ARGS.check_examples)

    runners = {}
    for name in methods:
        bs = (ARGS.pack_batch_size or ARGS.batch_size) if method(name)["pack"] else ARGS.batch_size
        runners[name] = Runner(name, make_trainer(ref, name, train, tp, bs, steps), steps)
    config = next(iter(runners.values())).model.config
    first = next(iter(runners.values()))
    n_frozen = sum(p.numel() for n, p in first.model.named_parameters()
                   if not p.requires_grad and "embed_tokens" not in n)
    if getattr(config, "tie_word_embeddings", False):
        n_frozen += config.vocab_size * config.hidden_size  # the LM head shares the embedding matrix
    for r in runners.values():
        for _ in range(ARGS.warmup):
            r.step(timed=False)

    peaks = {"float32": [], "bfloat16": []}
    loads = [load1()]

    def measure_peaks():
        for dt in (torch.float32, torch.bfloat16):
            peaks[str(dt).split(".")[1]].append(matmul_peak(config, dt))

    measure_peaks()
    order = list(runners)
    for rnd in range(ARGS.rounds):
        for name in order[rnd % len(order):] + order[: rnd % len(order)]:
            for _ in range(ARGS.round):
                runners[name].step()
            loads.append(load1())
        measure_peaks()
    load_after = os.getloadavg()

    best = {k: max(v) for k, v in peaks.items()}
    med = {k: statistics.median(v) for k, v in peaks.items()}
    out(f"Load average (1, 5, 15 min) before: {' '.join(f'{x:.2f}' for x in load_before)}; after: "
        f"{' '.join(f'{x:.2f}' for x in load_after)}; 1-min load during the run {min(loads):.2f}-{max(loads):.2f} "
        "(this run alone accounts for up to 2).")
    out()
    out(f"Matmul peak (torch.mm over one layer's linear shapes at 1024 tokens, forward and backward "
        f"orientations, measured before, between and after the rounds): fp32 best {best['float32']:.0f} / median "
        f"{med['float32']:.0f} GFLOP/s; bf16 best {best['bfloat16']:.0f} / median {med['bfloat16']:.0f} GFLOP/s "
        f"(bf16/fp32 {best['bfloat16'] / best['float32']:.2f}x).")
    out()
    out(f"FLOPs per step = 4*N_frozen*T + 6*N_lora*T + 6*layers*hidden*sum(len^2), N_frozen = {n_frozen / 1e6:.1f}M "
        f"(LM head included), N_lora = {first.n_lora / 1e6:.2f}M, T = real tokens of the step (padding excluded). "
        f"s/step is the median over {ARGS.rounds * ARGS.round} timed steps ({ARGS.rounds} rounds of {ARGS.round}, "
        "order rotated), after "
        f"{ARGS.warmup} warm-up step(s). % of peak uses the best (and median) peak of the dtype the matmuls run in over the whole run; "
        "% of adjacent peak divides each step's GFLOP/s by the mean of two peak measurements of its dtype taken "
        "just before and just after that step (the least load-sensitive figure on a shared machine).")
    out()
    base_rate = None
    out("| method | weights / LoRA dtype | real tokens/step | computed tokens/step | s/step (median) | real tokens/s "
        "| vs first fp32 | achieved GFLOP/s | % of matmul peak (best / median) | % of adjacent peak (median) "
        f"| CPU s/step | loss at step {steps} (mean of last {ARGS.round}) |")
    out("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in runners.items():
        s = statistics.median(r.times)
        tok = statistics.mean(r.tokens)
        comp = statistics.mean(r.computed)
        # rate from the total: a step's FLOPs and its time vary with its lengths
        rate = sum(step_flops(config, n_frozen, r.n_lora, t, q) for t, q in zip(r.tokens, r.sumsq)) / sum(r.times) / 1e9
        dtype = method(name)["compute"]
        tps = sum(r.tokens) / sum(r.times)
        base_rate = base_rate or (tps if name.startswith("fp32") else None)
        vs = f"{tps / base_rate:.2f}x" if base_rate else "-"
        wd = f"{str(r.weight_dtype).split('.')[1]} / {str(r.lora_dtype).split('.')[1]}"
        last = statistics.mean(r.losses[-ARGS.round:])
        adj = statistics.median(step_flops(config, n_frozen, r.n_lora, t, q) / dt / 1e9 / pk
                                for t, q, dt, pk in zip(r.tokens, r.sumsq, r.times, r.adjacent_peak))
        out(f"| {name} | {wd} | {tok:.0f} | {comp:.0f} | {s:.2f} | {tps:.0f} | {vs} | {rate:.0f} | "
            f"{100 * rate / best[dtype]:.0f}% / {100 * rate / med[dtype]:.0f}% | {100 * adj:.0f}% | "
            f"{statistics.median(r.cpu):.2f} | {last:.4f} |")
    out()
    if check:
        n, diff, head_diff = check
        out(f"LM head on labelled positions only vs every position (fp32, same packed batch): largest "
            f"|per-token log-prob difference| = {head_diff:.2e}.")
        out()
        out(f"Packing check (fp32, trl packing=True, BFD, {torch.nn.functional.scaled_dot_product_attention.__name__} "
            f"via attn_implementation={first.model.config._attn_implementation}): {n} examples in one packed row, "
            f"largest |per-example loss packed - alone| = {diff:.2e} ({'OK' if diff < 1e-4 else 'MISMATCH'}, "
            "tolerance 1e-4).")
    if ARGS.out:
        with open(ARGS.out, "w") as f:
            f.write("\n".join(LINES) + "\n")


if __name__ == "__main__":
    main()
