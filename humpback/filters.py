"""Filters on the generated instructions, before rating: cheap rules that drop clear junk, so that the
rater's time goes to pairs that could be kept.

Words: the instruction split on whitespace, each piece casefolded with its punctuation (Unicode
category P*) deleted, and pieces left empty dropped. So "What's" is one word "whats", "bounce-based"
is one word "bouncebased", and "?" alone is no word. Every rule below reads these words.

Rules, in this order; a record gets the reason of the first rule it fails, so exactly one:
1. empty: no words (an empty, blank or all-punctuation instruction).
2. too_short: fewer than `min_words` words.
3. too_long: more than `max_words` words (0: no upper limit).
4. copies_response: the instruction repeats the start of its own response: with k = min(copy_words,
   number of instruction words), the first k instruction words equal the first k response words. So a
   long instruction is caught by its first `copy_words` words, and a shorter one only if all of it is the
   response's opening (copy_words 0: rule off).
5. exact_duplicate: the same words as an instruction kept earlier.
6. near_duplicate: Jaccard similarity of word `ngram`-gram sets >= `near_duplicate` with an instruction
   kept earlier (an instruction shorter than `ngram` words is one n-gram: all of it) (0: rule off).
Rules 5-6 compare only with kept instructions, so the first of a group is kept, in record order.
"""

from __future__ import annotations

import unicodedata
from collections import defaultdict

from . import HumpbackError
from .config import FilterParams

REASONS = ("empty", "too_short", "too_long", "copies_response", "exact_duplicate", "near_duplicate")


def _strip_punct(piece: str) -> str:
    return "".join(ch for ch in piece if not unicodedata.category(ch).startswith("P"))


def words(text: str) -> list[str]:
    """The normalised words of `text` (module docstring)."""
    return [w for w in (_strip_punct(p.casefold()) for p in text.split()) if w]


def ngrams(ws: list[str], n: int) -> frozenset:
    if len(ws) <= n:
        return frozenset([tuple(ws)])
    return frozenset(tuple(ws[i:i + n]) for i in range(len(ws) - n + 1))


def jaccard(a: frozenset, b: frozenset) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def check_params(p: FilterParams) -> None:
    if p.min_words < 0 or p.max_words < 0 or p.copy_words < 0:
        raise HumpbackError("filter: min_words, max_words and copy_words must be >= 0")
    if p.max_words and p.max_words < p.min_words:
        raise HumpbackError(f"filter: max_words={p.max_words} is below min_words={p.min_words} (0: no upper limit)")
    if p.ngram < 1:
        raise HumpbackError(f"filter: ngram must be >= 1, not {p.ngram}")
    if not 0 <= p.near_duplicate <= 1:
        raise HumpbackError(f"filter: near_duplicate is a Jaccard threshold in [0, 1] (0: off), not {p.near_duplicate}")


def _text(record: dict, key: str, i: int) -> str:
    value = record.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise HumpbackError(f"record {i} ({record.get('id', '?')}): {key} is a {type(value).__name__}, not a string")
    return value


def _own_reason(ws: list[str], response: str, p: FilterParams) -> str | None:
    """Rules 1-4: those that read one record alone."""
    if not ws:
        return "empty"
    if len(ws) < p.min_words:
        return "too_short"
    if p.max_words and len(ws) > p.max_words:
        return "too_long"
    k = min(p.copy_words, len(ws))
    if k and ws[:k] == words(response)[:k]:
        return "copies_response"
    return None


def drop_reasons(records: list[dict], params: FilterParams) -> list[str | None]:
    """Per record, the reason it is dropped (one of REASONS), or None if kept."""
    check_params(params)
    if not params.enabled:
        return [None] * len(records)
    reasons: list[str | None] = []
    kept_words: set[tuple] = set()
    kept_grams: list[frozenset] = []
    by_gram: dict[tuple, list[int]] = defaultdict(list)  # n-gram -> kept instructions holding it
    for i, record in enumerate(records):
        ws = words(_text(record, "instruction", i))
        reason = _own_reason(ws, _text(record, "response", i), params)
        if reason is None and tuple(ws) in kept_words:
            reason = "exact_duplicate"
        grams = ngrams(ws, params.ngram)
        if reason is None and params.near_duplicate > 0:
            # Jaccard > 0 needs a shared n-gram, so only kept instructions sharing one can match.
            candidates = {j for g in grams for j in by_gram.get(g, ())}
            if any(jaccard(grams, kept_grams[j]) >= params.near_duplicate for j in candidates):
                reason = "near_duplicate"
        reasons.append(reason)
        if reason is None:
            kept_words.add(tuple(ws))
            for g in grams:
                by_gram[g].append(len(kept_grams))
            kept_grams.append(grams)
    return reasons


def metrics(reasons: list[str | None]) -> dict:
    dropped = {r: sum(1 for x in reasons if x == r) for r in REASONS}
    return {"generated": len(reasons), "kept": reasons.count(None), "dropped": dropped}


def filter_instructions(records: list[dict], params: FilterParams) -> tuple[list[dict], dict]:
    """(the kept records, unchanged and in order; metrics: generated, kept, dropped per reason)."""
    reasons = drop_reasons(records, params)
    return [r for r, why in zip(records, reasons) if why is None], metrics(reasons)
