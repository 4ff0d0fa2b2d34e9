"""Best-of-k self-augmentation: the backward model samples k instructions per response with the paper's
decoding (T = 0.7, top-p 0.9), and a chooser keeps the one that best explains the response, by the
response's per-token PMI under it (the rater's relevance term: log p(response | instruction) -
log p(response), per token), under a forward model (the base model, or M0)."""

from __future__ import annotations

import dataclasses

from . import prompts
from .curation.rater import relevance
from .engine import Decoding, Engine


def sample_instructions(engine: Engine, suffixes: list[str], decoding: Decoding, k: int) -> list[list[str]]:
    """k instructions per backward prompt: k batched passes, the j-th with seed `decoding.seed + j` (so the
    first is what one sampled pass with that seed writes, and each is its own result-cache entry)."""
    if k < 1 or not decoding.do_sample:
        raise ValueError("best-of-k needs k >= 1 and sampled decoding")
    runs = [engine.generate(prompts.BACKWARD_PREFIX, suffixes,
                            dataclasses.replace(decoding, seed=decoding.seed + j), desc=f"candidate {j + 1}/{k}")
            for j in range(k)]
    return [list(row) for row in zip(*runs)]


def choose(scorer: Engine, candidates: list[list[str]], responses: list[str],
           max_tokens: int) -> tuple[list[int], list[list[float | None]]]:
    """(index of the chosen candidate per response, every candidate's PMI). All candidates go to the
    scorer in one batched call; an empty candidate is never chosen (its PMI is None), and the first of
    equal scores wins."""
    flat = [(i, j) for i, cs in enumerate(candidates) for j, c in enumerate(cs) if c.strip()]
    pmi = relevance(scorer, [{"instruction": candidates[i][j], "response": responses[i]} for i, j in flat],
                    max_tokens) if flat else []
    scores: list[list[float | None]] = [[None] * len(cs) for cs in candidates]
    for (i, j), s in zip(flat, pmi):
        scores[i][j] = s
    chosen = [max(range(len(row)), key=lambda j: (row[j] is not None, row[j] or 0.0, -j)) for row in scores]
    return chosen, scores
