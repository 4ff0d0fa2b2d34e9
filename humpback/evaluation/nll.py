"""Held-out NLL of each response given its instruction, and the conditioning gap: how much more likely a
response is under its own instruction than under another held-out one (a model that ignores its
instruction has a gap near zero, whatever its NLL)."""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from .. import formats, work
from ..prompts import forward_text
from .bootstrap import interval


def token_losses(model, tokenizer, pairs: list[dict], batch_size: int, max_length: int, desc: str,
                 system: str | None = None, response_tokens: int | None = None) -> list[list[float]]:
    """Per pair, the NLL (nats) of each response token given the instruction (of the first
    `response_tokens` only, if given), in the prompt format the fine-tune trains on (the chat template's
    end-of-turn counts as a response token)."""
    examples = []
    special = not tokenizer.chat_template  # a rendered chat template holds its own special tokens
    for p in pairs:
        prompt_text, completion_text = forward_text(p, tokenizer, system)
        prompt = tokenizer(prompt_text, add_special_tokens=special)["input_ids"]
        completion = tokenizer(completion_text, add_special_tokens=False)["input_ids"][:response_tokens]
        ids = (prompt + completion)[:max_length]
        labels = ([-100] * len(prompt) + completion)[:max_length]
        examples.append((ids, labels))
    losses = []
    device = next(model.parameters()).device
    body, head = model.get_decoder(), model.get_output_embeddings()
    for i in tqdm(range(0, len(examples), batch_size), desc=desc, unit="batch"):
        batch = examples[i : i + batch_size]
        width = max(len(ids) for ids, _ in batch)
        pad = tokenizer.pad_token_id
        input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in batch], device=device)
        labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in batch], device=device)
        mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in batch], device=device)
        work.add(forward=sum(len(ids) for ids, _ in batch), forward_padded=len(batch) * width)
        with torch.no_grad():
            hidden = body(input_ids=input_ids, attention_mask=mask).last_hidden_state[:, :-1]
            target = labels[:, 1:]
            # Only the response's positions go through the 49k-wide output layer, one row at a time: the
            # whole batch's float logits would be half a GiB, written and read once (benchmarks/RESULTS.md).
            for row, tgt in zip(hidden, target):
                keep = tgt != -100
                nll = torch.nn.functional.cross_entropy(head(row[keep]).float(), tgt[keep], reduction="none")
                losses.append(nll.tolist())
    return losses


def nll_summary(losses: list[list[float]]) -> dict:
    """Token-weighted mean NLL (nats per response token) and perplexity, plus the per-example mean."""
    total, tokens = sum(map(sum, losses)), sum(map(len, losses))
    per_example = [sum(x) / len(x) for x in losses if x]
    mean = total / max(tokens, 1)
    return {"nll": round(mean, 4), "perplexity": round(math.exp(mean), 3),
            "mean_example_nll": round(sum(per_example) / max(len(per_example), 1), 4),
            "tokens": tokens, "examples": len(per_example)}


def nll_delta(base: list[list[float]], final: list[list[float]], resamples: int, seed: int) -> dict:
    """Final minus base token-weighted NLL, with a paired bootstrap interval over held-out pairs."""
    sb, sf, n = [sum(x) for x in base], [sum(x) for x in final], [len(x) for x in base]
    delta = (sum(sf) - sum(sb)) / max(sum(n), 1)
    return {"nll_delta": round(delta, 4),
            "nll_delta_ci": interval(lambda b, f, t: (f.sum() - b.sum()) / t.sum(), [sb, sf, n], resamples, seed)}


def derangement(n: int, seed: int) -> list[int]:
    """A fixed permutation without a fixed point: item i takes the instruction of item order[i]. A seeded
    shuffle, then each item takes its successor's place in that cycle (n >= 2)."""
    if n < 2:
        raise ValueError("a derangement needs at least 2 items")
    cycle = formats.shuffled(list(range(n)), seed)
    order = [0] * n
    for k, i in enumerate(cycle):
        order[i] = cycle[(k + 1) % n]
    return order


def swapped(pairs: list[dict], order: list[int]) -> list[dict]:
    """Each response with the instruction of pair order[i]."""
    return [{**p, "instruction": pairs[j]["instruction"]} for p, j in zip(pairs, order)]


def gap_items(own: list[list[float]], other: list[list[float]], tokens: int) -> list[float]:
    """Per pair, mean NLL of the first `tokens` response tokens under another instruction minus under its
    own (the response's first tokens are where an instruction matters most, and a short window keeps the
    second pass cheap)."""
    return [sum(o[:tokens]) / len(o[:tokens]) - sum(w[:tokens]) / len(w[:tokens]) for w, o in zip(own, other)
            if w and o]


def gap_summary(items: list[float], resamples: int, seed: int) -> dict:
    return {"gap": round(sum(items) / len(items), 4),
            "gap_ci": interval(lambda g: g.mean(), [items], resamples, seed)}


def gap_delta(base: list[float], final: list[float], resamples: int, seed: int) -> dict:
    return {"gap_delta": round((sum(final) - sum(base)) / len(base), 4),
            "gap_delta_ci": interval(lambda b, f: f.mean() - b.mean(), [base, final], resamples, seed)}
