"""The backtranslated rater check: pairs whose instructions this pipeline's backward models wrote for new
responses of our own (data/rater_check/responses.jsonl), each labelled by hand, blind to every model
score, with the rubric level, whether the instruction fits its response, and why (docs/labelling.md).
Split by response: every instruction written for one response lies in the same part."""

from __future__ import annotations

import hashlib

from .. import HumpbackError, formats

FIELDS = ("id", "response_id", "backward", "decoding", "instruction", "response", "rating", "fits", "why", "split")


def pair_key(response_id: str, instruction: str) -> str:
    """A pair's label key: the same instruction written twice for one response (greedy and sampled, or
    by two backward models) is labelled once. It names neither the model nor the decoding."""
    return hashlib.sha1(f"{response_id}\x00{instruction}".encode()).hexdigest()[:12]


def split_responses(response_ids: list[str], seed: int = 0) -> dict[str, str]:
    """Half of the responses (seeded, from their sorted ids) are dev, the rest test."""
    ids = formats.shuffled(sorted(response_ids), seed)
    return {r: "dev" if i < len(ids) // 2 else "test" for i, r in enumerate(ids)}


def load_backtranslated(path: str) -> list[dict]:
    """The labelled pairs; a record with a missing field, a rating outside 1-5, a non-boolean `fits`, an
    empty `why` or a response split across parts is one clear error naming the file and line."""
    pairs, parts = [], {}
    for where, rec in formats.read_jsonl(path):
        if not isinstance(rec, dict):
            raise HumpbackError(f"{where}: expected a JSON object, got {formats.json_type(rec)}")
        if missing := [f for f in FIELDS if f not in rec]:
            raise HumpbackError(f"{where}: missing field(s) {', '.join(missing)}")
        if type(rec["rating"]) is not int or rec["rating"] not in (1, 2, 3, 4, 5):  # not True, not 4.0
            raise HumpbackError(f"{where}: rating must be an integer 1-5, got {rec['rating']!r}")
        if not isinstance(rec["fits"], bool):
            raise HumpbackError(f"{where}: fits must be true or false, got {rec['fits']!r}")
        if not isinstance(rec["why"], str) or not rec["why"].strip():
            raise HumpbackError(f"{where}: why must say, in a line, why the label")
        if rec["split"] not in ("dev", "test"):
            raise HumpbackError(f"{where}: split must be dev or test, got {rec['split']!r}")
        if parts.setdefault(rec["response_id"], rec["split"]) != rec["split"]:
            raise HumpbackError(f"{where}: response {rec['response_id']!r} is in both dev and test")
        pairs.append(rec)
    return pairs
