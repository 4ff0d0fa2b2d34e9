"""Instruction-following difficulty (IFD; Li et al. 2024, Cherry LLM; Superfiltering): per pair, the base
model's mean response NLL with the instruction divided by that without it (an empty instruction in the
same format). Near 1: the instruction barely helps predict the response; above 1: it misleads. The
`ifd` selection keeps the highest IFD below 1, the pairs hardest to answer that the instruction still
explains. Close to the relevance (PMI) that the probe rater reads, but from the base model."""

from __future__ import annotations

from .. import models
from ..evaluation.nll import token_losses


def ifd_scores(pairs: list[dict], model_params, batch_size: int, max_length: int) -> list[float | None]:
    tok = models.load_tokenizer(model_params.base, padding_side="right")
    model = models.load_model(model_params.base, model_params.load_in_4bit, model_params.dtype)
    given = token_losses(model, tok, pairs, batch_size, max_length, "IFD, with instruction")
    alone = token_losses(model, tok, [{**p, "instruction": ""} for p in pairs], batch_size, max_length,
                         "IFD, without instruction")
    return [round((sum(g) / len(g)) / (sum(a) / len(a)), 4) if g and a and sum(a) > 0 else None
            for g, a in zip(given, alone)]
