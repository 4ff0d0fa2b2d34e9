"""The full recipe's parts that several stages share: which model rates and judges, the paths of each
self-curation round, and what the fine-tune trains on (seed mix, tags).

The paper's order (section 2.2): the seed model M0 rates the augmented pairs; the curated pairs train M1;
with a second iteration M1 rates them again, and the pairs it keeps train the final model.
"""

from __future__ import annotations

import os
import shutil

from . import formats, paths, prompts
from .config import FinetuneParams, Params

SKIPPED = "SKIPPED.md"


def round_arg(argv: list[str]) -> paths.Round:
    """The round a curate or finetune stage runs: `round1`, or the final round by default."""
    name = argv[1] if len(argv) > 1 else "final"
    if name not in paths.ROUNDS:
        from . import HumpbackError

        raise HumpbackError(f"unknown round {name!r}; known: {', '.join(paths.ROUNDS)}")
    return paths.ROUNDS[name]


def model_of(ref: str, params: Params) -> tuple[str, str | None]:
    """(base reference, LoRA adapter or None) for a rater or judge reference: `self` is M0."""
    if ref == "self":
        return params.model.base, paths.SEED_MODEL
    return ref, None


def rater_model(params: Params) -> tuple[str, str | None]:
    return model_of(params.curation.rater, params)


def judge_model(params: Params) -> tuple[str, str | None]:
    """The judge's model: the rater's under `evaluate.judge: rater` (the fitted rater scores each answer),
    else the pairwise judge's."""
    ref = params.evaluate.judge
    return rater_model(params) if ref == "rater" else model_of(ref, params)


def seed_model_needed(params: Params) -> bool:
    return "self" in (params.curation.rater, params.evaluate.judge)


def write_skipped(out_dir: str, why: str) -> None:
    """An out that this configuration does not compute: a directory that says why (DVC needs the out)."""
    shutil.rmtree(out_dir, ignore_errors=True)
    os.makedirs(out_dir)
    with open(os.path.join(out_dir, SKIPPED), "w", encoding="utf-8") as f:
        f.write(f"Not computed: {why}\n")


def is_skipped(out_dir: str) -> bool:
    return os.path.exists(os.path.join(out_dir, SKIPPED))


def inference_system(p: FinetuneParams) -> str | None:
    """The system prompt the fine-tuned model is used (and evaluated) with: the seed-style tag."""
    return prompts.ASSISTANT_TAG if p.tags else None


def finetune_examples(curated: list[dict], seed_pairs: list[dict], tokenizer, p: FinetuneParams) -> list[dict]:
    """Training examples of the forward fine-tune: the curated augmented pairs, plus with `mix_seed`
    up to `seed_pairs` seed pairs (all when 0); with `tags`, each source gets its system prompt."""
    def tag(source):
        return prompts.TAGS[source] if p.tags else None

    examples = [prompts.forward_example(x, tokenizer, tag("augmented")) for x in curated]
    if p.mix_seed:
        chosen = formats.shuffled(seed_pairs, p.seed)[: p.seed_pairs or None]
        examples = [prompts.forward_example(x, tokenizer, tag("seed")) for x in chosen] + examples
    return examples
