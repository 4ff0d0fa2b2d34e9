"""Held-out evaluation: mean negative log-likelihood of each response given its instruction."""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from . import work
from .prompts import forward_text


def response_nll(model, tokenizer, pairs: list[dict], batch_size: int, max_length: int, desc: str,
                 system: str | None = None) -> dict:
    """Token-weighted mean NLL (nats per response token) and perplexity, plus the per-example mean, with
    the prompt format the fine-tune trains on (the chat template's end-of-turn counts as a response token)."""
    examples = []
    special = not tokenizer.chat_template  # a rendered chat template holds its own special tokens
    for p in pairs:
        prompt_text, completion_text = forward_text(p, tokenizer, system)
        prompt = tokenizer(prompt_text, add_special_tokens=special)["input_ids"]
        completion = tokenizer(completion_text, add_special_tokens=False)["input_ids"]
        ids = (prompt + completion)[:max_length]
        labels = ([-100] * len(prompt) + completion)[:max_length]
        examples.append((ids, labels))
    total_nll, total_tokens, per_example = 0.0, 0, []
    device = next(model.parameters()).device
    for i in tqdm(range(0, len(examples), batch_size), desc=desc, unit="batch"):
        batch = examples[i : i + batch_size]
        width = max(len(ids) for ids, _ in batch)
        pad = tokenizer.pad_token_id
        input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in batch], device=device)
        labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in batch], device=device)
        mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in batch], device=device)
        work.add(forward=sum(len(ids) for ids, _ in batch), forward_padded=len(batch) * width)
        with torch.no_grad():
            logits = model(input_ids=input_ids, attention_mask=mask).logits[:, :-1].float()
        target = labels[:, 1:]
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, ignore_index=-100, reduction="none")
        counts = (target != -100).sum(-1)
        for row_nll, n in zip(nll.sum(-1).tolist(), counts.tolist()):
            if n:
                per_example.append(row_nll / n)
            total_nll += row_nll
            total_tokens += n
    mean = total_nll / max(total_tokens, 1)
    return {
        "nll": round(mean, 4),
        "perplexity": round(math.exp(mean), 3),
        "mean_example_nll": round(sum(per_example) / max(len(per_example), 1), 4),
        "tokens": total_tokens,
        "examples": len(per_example),
    }
