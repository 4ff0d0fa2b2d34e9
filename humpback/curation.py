"""Self-curation: the rater scores each (instruction, response) pair, then a threshold keeps the best."""

from __future__ import annotations

from collections import Counter

from . import prompts
from .generation import Decoding, Engine

SCORE_LEAD = "Score:"
SENTINEL = "\x00PAIR\x00"


def rater_prompt_parts(tokenizer, scoring: str) -> tuple[str, str]:
    """(shared prefix, per-pair template with `{pair}`) for the rater, in its chat format if it has one."""
    prefix = prompts.rater_prefix()
    if tokenizer.chat_template:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prefix + SENTINEL}], add_generation_prompt=True, tokenize=False
        )
        head, tail = text.split(SENTINEL)
    else:
        head, tail = prefix, "\n"
    tail = tail.replace("{", "{{").replace("}", "}}")
    return head, "{pair}" + tail + (SCORE_LEAD if scoring == "expected" else "")


def digit_candidates(tokenizer) -> tuple[str, list[int]]:
    """Text to append after `Score:` and the token ids of "1".."5" that the model may write next.

    Tokenizers differ: some have " 4" as one token, others write " " then "4".
    """
    base = tokenizer(SCORE_LEAD, add_special_tokens=False)["input_ids"]
    for joiner in ("", " "):
        ids = []
        for d in "12345":
            full = tokenizer(f"{SCORE_LEAD} {d}", add_special_tokens=False)["input_ids"]
            lead = tokenizer(SCORE_LEAD + joiner, add_special_tokens=False)["input_ids"] if joiner else base
            if full[: len(lead)] == lead and len(full) == len(lead) + 1:
                ids.append(full[-1])
        if len(set(ids)) == 5:
            return joiner, ids
    raise ValueError("the rater's tokenizer has no single token for each score digit 1-5")


def rate(engine: Engine, pairs: list[dict], scoring: str, max_new_tokens: int = 96) -> list[dict]:
    """Score each pair 1-5. `generate`: the rater reasons, then writes `Score: N` (parsed; None if
    unparsable). `expected`: the probability-weighted score over "1".."5" after `Score:`."""
    tok = engine.tok
    head, template = rater_prompt_parts(tok, scoring)
    rated = []
    if scoring == "generate":
        suffixes = [template.format(pair=prompts.rater_pair(p["instruction"], p["response"])) for p in pairs]
        outputs = engine.generate(head, suffixes, Decoding(max_new_tokens=max_new_tokens), desc="rate")
        for p, out in zip(pairs, outputs):
            score, reasoning = prompts.parse_score(out)
            rated.append({**p, "score": score, "rater_output": out, "reasoning": reasoning})
    else:
        joiner, candidates = digit_candidates(tok)
        suffixes = [template.format(pair=prompts.rater_pair(p["instruction"], p["response"])) + joiner for p in pairs]
        all_probs = engine.next_token_probs(head, suffixes, candidates, desc="rate")
        for p, probs in zip(pairs, all_probs):
            mass = sum(probs)
            if mass <= 0:  # the rater puts no weight on any digit: unparsable, like a missing score
                rated.append({**p, "score": None, "rater_output": "P(1..5) = 0", "reasoning": ""})
                continue
            dist = [q / mass for q in probs]
            score = sum((i + 1) * q for i, q in enumerate(dist))
            rated.append({**p, "score": round(score, 4), "probabilities": [round(q, 4) for q in dist],
                          "rater_output": f"P(1..5) = {', '.join(f'{q:.3f}' for q in dist)}; digit mass {mass:.3f}",
                          "reasoning": ""})
    return rated


def score_histogram(rated: list[dict]) -> list[dict]:
    """Counts per score bin 1..5 (expected scores are rounded) plus an `unparsable` bin."""
    counts = Counter("unparsable" if r["score"] is None else str(int(round(r["score"]))) for r in rated)
    return [{"score": b, "count": counts.get(b, 0)} for b in ("1", "2", "3", "4", "5", "unparsable")]


def rate_metrics(rated: list[dict]) -> dict:
    scores = [r["score"] for r in rated if r["score"] is not None]
    return {
        "rated": len(rated),
        "scored": len(scores),
        "unparsable": len(rated) - len(scores),
        "mean_score": round(sum(scores) / len(scores), 4) if scores else None,
        "histogram": {h["score"]: h["count"] for h in score_histogram(rated)},
    }


def curate(rated: list[dict], threshold: float) -> list[dict]:
    """Keep the pairs scored at or above the threshold; unparsable ones are never kept."""
    return [r for r in rated if r["score"] is not None and r["score"] >= threshold]


def curate_metrics(rated: list[dict], threshold: float) -> dict:
    return {
        "threshold": threshold,
        "rated": len(rated),
        "kept": len(curate(rated, threshold)),
        "kept_at": {str(t): len(curate(rated, t)) for t in (3, 4, 5)},
    }
