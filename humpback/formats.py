"""Readers and parsers for the two raw corpus formats, and the JSON dataset files.

Bad input policy (see README, "Bad input"):
- A line that is not valid JSON is fatal: the file is corrupt, so we stop with `file:line`.
- A record that parses but cannot give a pair (missing field, empty text, no assistant turn)
  is skipped and counted under its reason. LIMA multi-turn records are dropped and counted.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from . import HumpbackError

GUANACO_TURN = re.compile(r"### (Human|Assistant):")

SKIP_REASONS = ("missing_field", "empty_text", "no_assistant_turn", "multi_turn")


@dataclass
class ParseReport:
    """Counts of what a parser did; `read == kept + sum(dropped.values())` always holds."""

    read: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)

    def drop(self, reason: str) -> None:
        assert reason in SKIP_REASONS, reason
        self.dropped[reason] += 1

    def as_dict(self) -> dict:
        return {
            "read": self.read,
            "kept": self.kept,
            "dropped": sum(self.dropped.values()),
            "dropped_by_reason": {r: self.dropped.get(r, 0) for r in SKIP_REASONS},
        }


def read_jsonl(path: str) -> Iterator[tuple[str, object]]:
    """Yield (`path:line`, parsed object) for each non-blank line; invalid JSON is fatal."""
    if not os.path.exists(path):
        raise HumpbackError(f"{path}: file not found")
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield f"{path}:{lineno}", json.loads(line)
            except json.JSONDecodeError as e:
                raise HumpbackError(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno})") from None


def guanaco_turns(text: str) -> list[tuple[str, str]]:
    """Split `### Human: ...### Assistant: ...` text into (role, content) turns."""
    parts = GUANACO_TURN.split(text)
    # parts = [before, role1, content1, role2, content2, ...]
    return [(parts[i].lower(), parts[i + 1].strip()) for i in range(1, len(parts) - 1, 2)]


def parse_guanaco(records: Iterable[tuple[str, object]], report: ParseReport) -> list[dict]:
    """Seed pairs from the first human turn of each conversation and the assistant reply to it."""
    pairs = []
    for where, rec in records:
        report.read += 1
        text = rec.get("text") if isinstance(rec, dict) else None
        if not isinstance(text, str):
            report.drop("missing_field")
            continue
        turns = guanaco_turns(text)
        if not text.strip() or not turns:
            report.drop("empty_text")
            continue
        if turns[0][0] != "human" or len(turns) < 2 or turns[1][0] != "assistant":
            report.drop("no_assistant_turn")
            continue
        instruction, response = turns[0][1], turns[1][1]
        if not instruction or not response:
            report.drop("empty_text")
            continue
        report.kept += 1
        pairs.append({"id": f"guanaco-{report.read - 1:05d}", "instruction": instruction, "response": response})
    return pairs


def parse_lima(records: Iterable[tuple[str, object]], report: ParseReport) -> list[dict]:
    """Single-turn LIMA records as pairs; multi-turn ones are dropped and counted."""
    pairs = []
    for where, rec in records:
        report.read += 1
        conv = rec.get("conversations") if isinstance(rec, dict) else None
        if not isinstance(conv, list) or not all(isinstance(t, str) for t in conv):
            report.drop("missing_field")
            continue
        if not conv or any(not t.strip() for t in conv):
            report.drop("empty_text")
            continue
        if len(conv) < 2:
            report.drop("no_assistant_turn")
            continue
        if len(conv) > 2:
            report.drop("multi_turn")
            continue
        report.kept += 1
        pairs.append(
            {
                "id": f"lima-{report.read - 1:05d}",
                "instruction": conv[0].strip(),
                "response": conv[1].strip(),
                "source": str(rec.get("source") or "unknown"),
            }
        )
    return pairs


def hub_records(repo_id: str, name: str, token: str | None = None) -> Iterator[tuple[str, object]]:
    """Rows of a Hub dataset's train split, in the same shape as `read_jsonl` yields."""
    import datasets

    try:
        ds = datasets.load_dataset(repo_id, split="train", token=token)
    except Exception as e:  # network, auth (LIMA is gated) or a missing repo
        raise HumpbackError(f"{name}: cannot load Hub dataset {repo_id!r}: {type(e).__name__}: {e}") from None
    for i, row in enumerate(ds):
        yield f"{repo_id}[{i}]", row


def load_json(path: str) -> list[dict]:
    if not os.path.exists(path):
        raise HumpbackError(f"{path}: file not found (run the stage that writes it: dvc repro)")
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise HumpbackError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None


def write_json(path: str, obj) -> None:
    """Write atomically, so a killed run never leaves a half-written out behind."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")
    os.replace(tmp, path)


def shuffled(records: list[dict], seed: int) -> list[dict]:
    """A seeded permutation; its first n items are a sample that only grows when n grows."""
    import random

    order = list(records)
    random.Random(seed).shuffle(order)
    return order


def split_heldout(pairs: list[dict], size: int, seed: int) -> tuple[list[dict], list[dict]]:
    """(held-out, rest): the held-out pairs are for evaluation and never reach self-augmentation."""
    if size >= len(pairs):
        raise HumpbackError(f"data.heldout_size={size} leaves no single-turn LIMA pairs ({len(pairs)} parsed)")
    order = shuffled(pairs, seed)
    heldout_ids = {p["id"] for p in order[:size]}
    return [p for p in pairs if p["id"] in heldout_ids], [p for p in pairs if p["id"] not in heldout_ids]


def sample(pairs: list[dict], n: int, seed: int, name: str) -> list[dict]:
    if n > len(pairs):
        raise HumpbackError(f"augment.num_samples={n} but {name} has only {len(pairs)} records")
    return shuffled(pairs, seed)[:n]
