"""Where the evaluation's time goes, and what cuts it (issue 19's 3-minute target), on the committed run's
final model (models/final) and inputs:

(a) held-out NLL, own and another instruction (the conditioning gap's pass), as `evaluate` computes it:
    `before`: the adapter unmerged (peft) and the output layer over every position of the batch;
    `response positions`: unmerged, the output layer on the response's positions only (nll.token_losses);
    `merged, response positions`: that, with the adapter merged into the weights (as the engine runs it).
    Each is timed, and its per-token losses and mean NLL compared with `before`.
(b) greedy IFEval answers of the final model at several `evaluate.respond_batch_size`s, without the
    result cache: time, generated tokens, and how many answers equal the first batch size's.

    python benchmarks/bench_eval.py [--batch-sizes 64,128,240] [--skip-nll] [--save FILE] [--compare FILE]

--save and --compare check that an engine change computes the same answers: run with --save on one
checkout (PYTHONPATH=<checkout>), then with --compare on the other.

Prints a markdown table; the CPU is named in it.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from humpback import models, paths, prompts
from humpback.config import load_params
from humpback.engine import Decoding, Engine
from humpback.evaluation import measure, nll
from humpback.judge import shared_prefix
from humpback.prompts import forward_text
from humpback.stage import cpu_model


def full_logits_losses(model, tokenizer, pairs, batch_size, max_length, desc, system=None, response_tokens=None):
    """The NLL pass as it was: logits (as float) at every position of the batch, then the loss."""
    examples = []
    for p in pairs:
        prompt_text, completion_text = forward_text(p, tokenizer, system)
        prompt = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
        completion = tokenizer(completion_text, add_special_tokens=False)["input_ids"][:response_tokens]
        examples.append(((prompt + completion)[:max_length], ([-100] * len(prompt) + completion)[:max_length]))
    losses = []
    for i in range(0, len(examples), batch_size):
        batch = examples[i : i + batch_size]
        width, pad = max(len(ids) for ids, _ in batch), tokenizer.pad_token_id
        input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in batch])
        labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in batch])
        mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in batch])
        with torch.no_grad():
            logits = model(input_ids=input_ids, attention_mask=mask).logits[:, :-1].float()
        target = labels[:, 1:]
        out = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, ignore_index=-100, reduction="none")
        for row, keep in zip(out.tolist(), (target != -100).tolist()):
            losses.append([x for x, k in zip(row, keep) if k])
    return losses


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-sizes", default="64,128,240")
    ap.add_argument("--skip-nll", action="store_true", help="only (b)")
    ap.add_argument("--save", help="(b): write the first batch size's answers to this JSON file")
    ap.add_argument("--compare", help="(b): count the first batch size's answers identical to this file's")
    args = ap.parse_args()
    params = load_params()
    m, e = params.model, params.evaluate
    inputs = measure.load_inputs(params)
    held, tok, system = inputs.heldout, inputs.tokenizer, inputs.system
    others = nll.swapped(held, nll.derangement(len(held), e.seed))
    print(f"CPU {cpu_model()} x{os.cpu_count()}, torch {torch.__version__} with {torch.get_num_threads()} threads, "
          f"dtype {models.resolve_dtype(m.dtype)}; {len(held)} held-out pairs, {len(inputs.ifeval)} IFEval prompts\n")

    if not args.skip_nll:
        nll_passes(m, e, held, others, tok, system)
    first = answers(m, e, inputs, tok, system, [int(b) for b in args.batch_sizes.split(",")])
    if args.save:
        with open(args.save, "w", encoding="utf-8") as f:
            json.dump(first, f)
    if args.compare:  # e.g. the same command's --save on another checkout (PYTHONPATH=<checkout>)
        with open(args.compare, encoding="utf-8") as f:
            other = json.load(f)
        print(f"\nidentical to {args.compare}: {sum(a == b for a, b in zip(first, other))}/{len(first)}")


def nll_passes(m, e, held, others, tok, system):
    print("(a) held-out NLL passes of the final model (own instruction, then another: gap_tokens "
          f"{e.gap_tokens}), batch {e.batch_size}\n")
    print("| method | load s | own s | another s | total s | NLL (own) | gap | largest abs difference from before |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    reference = None
    for name in ("before", "response positions", "merged, response positions"):
        if name.startswith("merged"):
            model, t_load = timed(lambda: models.load_model(m.base, m.load_in_4bit, m.dtype, adapter=paths.FINAL.model))
        else:
            from peft import PeftModel

            model, t_load = timed(lambda: PeftModel.from_pretrained(models.load_model(m.base, m.load_in_4bit, m.dtype),
                                                                    paths.FINAL.model))
        losses = full_logits_losses if name == "before" else nll.token_losses
        own, t_own = timed(lambda: losses(model, tok, held, e.batch_size, e.max_length, "nll", system))
        other, t_other = timed(lambda: losses(model, tok, others, e.batch_size, e.max_length, "nll", system,
                                              e.gap_tokens))
        flat = [x for row in own + other for x in row]
        reference = reference or flat
        diff = max(abs(a - b) for a, b in zip(flat, reference)) if len(flat) == len(reference) else float("nan")
        mean, gap = nll.nll_summary(own)["nll"], sum(nll.gap_items(own, other, e.gap_tokens)) / len(own)
        print(f"| {name} | {t_load:.1f} | {t_own:.1f} | {t_other:.1f} | {t_own + t_other:.1f} | {mean:.4f} | "
              f"{gap:.4f} | {diff:.2e} |")


def answers(m, e, inputs, tok, system, batch_sizes):
    print(f"\n(b) greedy IFEval answers of the final model, max_new_tokens {e.ifeval_max_new_tokens}, "
          "no result cache\n")
    model = models.load_model(m.base, m.load_in_4bit, m.dtype, adapter=paths.FINAL.model)
    etok = models.load_tokenizer(paths.FINAL.model)
    texts = [prompts.chat_prompt(tok, r["prompt"], system) for r in inputs.ifeval]
    cut = shared_prefix(texts)
    print("| respond_batch_size | s | generated tokens | tok/s | answers equal to the first row's |")
    print("|---:|---:|---:|---:|---:|")
    first = None
    for bs in batch_sizes:
        engine = Engine(model, etok, "bench", bs, None, add_special_tokens=False)
        out, t = timed(lambda: engine.generate(texts[0][:cut], [x[cut:] for x in texts],
                                               Decoding(max_new_tokens=e.ifeval_max_new_tokens), desc=f"batch {bs}"))
        first = first or out
        gen = engine.stats["generated_tokens"]
        print(f"| {bs} | {t:.1f} | {gen} | {gen / t:.0f} | {sum(a == b for a, b in zip(out, first))}/{len(out)} |")
    return first


if __name__ == "__main__":
    main()
