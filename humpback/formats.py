"""Readers and parsers for the two raw corpus formats, and the JSON dataset files.

Bad input policy (see README, "Bad input"):
- A line that is not valid JSON is fatal: the file is corrupt, so we stop with `file:line`. So is a line
  that is not valid UTF-8, NaN/Infinity or a number Python cannot hold, a lone surrogate (`"\\ud800"`,
  not Unicode) and nesting deeper than `MAX_DEPTH`. A UTF-8 BOM on line 1 and `\\r\\n` endings are fine.
- A record that parses but cannot give a pair (missing field, empty text, no assistant turn)
  is skipped and counted under its reason. LIMA multi-turn records are dropped and counted.
"""

from __future__ import annotations

import json
import math
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


MAX_DEPTH = 128  # JSON nesting a corpus line may have (serde_json's default); deeper is fatal
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # how a surrogate can get into a str from valid UTF-8
_SURROGATE = re.compile("[\ud800-\udfff]")


class _NotJson(ValueError):
    """A token json accepts but the data policy does not (NaN, an out-of-range number)."""


def _parse_constant(name: str):
    raise _NotJson(f"{name} is not a JSON number")


def _parse_float(s: str) -> float:
    x = float(s)
    if math.isinf(x):  # 1e999
        raise _NotJson(f"number {s[:20]}{'...' if len(s) > 20 else ''} is out of range")
    return x


def _parse_int(s: str) -> int:
    try:
        return int(s)
    except ValueError:  # over sys.get_int_max_str_digits() digits
        raise _NotJson(f"integer of {len(s)} digits is too long") from None


def _loads(text: str):
    """json.loads under the policy; raises ValueError (message for the user) or RecursionError."""
    return json.loads(text, parse_constant=_parse_constant, parse_float=_parse_float, parse_int=_parse_int)


def _bad_value(obj) -> str | None:
    """Why a parsed line is not data (a lone surrogate, nesting over MAX_DEPTH), else None; no recursion."""
    stack = [(obj, 1)]
    while stack:
        o, depth = stack.pop()
        if isinstance(o, str):
            m = _SURROGATE.search(o)
            if m:
                return f"not valid Unicode (lone surrogate \\u{ord(m.group()):04x} in a string)"
        elif isinstance(o, (dict, list)):
            if depth > MAX_DEPTH:
                return f"JSON nested more than {MAX_DEPTH} levels deep"
            items = [*o.keys(), *o.values()] if isinstance(o, dict) else o
            stack.extend((x, depth + 1) for x in items)
    return None


def json_type(obj) -> str:
    """The JSON name of a parsed value's type, for error messages."""
    if obj is None or isinstance(obj, bool):
        return {None: "null", True: "true", False: "false"}[obj]
    return {dict: "object", list: "array", str: "string"}.get(type(obj), "number")


def _physical_lines(f) -> Iterator[bytes]:
    """The lines of a binary file, without their ends, split as text mode splits them (universal newlines:
    `\\n`, `\\r\\n` and a lone `\\r` each end a line), so that line numbers match what an editor shows."""
    for chunk in f:  # each ends with b"\n", but the last may not
        body = chunk.removesuffix(b"\r\n") if chunk.endswith(b"\r\n") else chunk.removesuffix(b"\n")
        if b"\r" in body:
            yield from body.split(b"\r")
        else:
            yield body


def _open_binary(path: str, missing: str):
    if not os.path.exists(path):
        raise HumpbackError(f"{path}: {missing}")
    if os.path.isdir(path):
        raise HumpbackError(f"{path}: is a directory, not a file")
    try:
        return open(path, "rb")
    except OSError as e:
        raise HumpbackError(f"{path}: cannot read ({e.strerror or e})") from None


def _decode(raw: bytes, path: str, lineno: int = 1) -> str:
    """`raw` (a line, or a whole file from line `lineno` on) as text; bad bytes are one `path:line` error."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        before = raw[: e.start]
        lineno += before.count(b"\n")
        col = len(before[before.rfind(b"\n") + 1:].decode("utf-8")) + 1  # in characters, as json counts
        raise HumpbackError(f"{path}:{lineno}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {col})") from None


def read_jsonl(path: str) -> Iterator[tuple[str, object]]:
    """Yield (`path:line`, parsed object) for each non-blank line; any line that is not valid UTF-8 JSON
    data is fatal, as one `path:line: ...` HumpbackError (see the module docstring)."""
    f = _open_binary(path, "file not found")
    with f:
        try:
            for lineno, raw in enumerate(_physical_lines(f), start=1):
                where = f"{path}:{lineno}"
                if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                    raw = raw[3:]  # a UTF-8 BOM, as some Windows editors write
                line = _decode(raw, path, lineno)
                if not line.strip():
                    continue
                try:
                    obj = _loads(line)
                except json.JSONDecodeError as e:
                    raise HumpbackError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
                except ValueError as e:
                    raise HumpbackError(f"{where}: invalid JSON ({e})") from None
                except RecursionError:
                    raise HumpbackError(f"{where}: JSON nested more than {MAX_DEPTH} levels deep") from None
                if (line.count("[") + line.count("{") > MAX_DEPTH or _SURROGATE_ESCAPE.search(line)) and (
                        why := _bad_value(obj)):
                    raise HumpbackError(f"{where}: {why}")
                yield where, obj
        except OSError as e:  # an I/O error mid-file
            raise HumpbackError(f"{path}: cannot read ({e.strerror or e})") from None


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
    """A JSON dataset file the pipeline wrote: a list of records; anything else is one clear error."""
    f = _open_binary(path, "file not found (run the stage that writes it: dvc repro)")
    with f:
        try:
            raw = f.read()
        except OSError as e:
            raise HumpbackError(f"{path}: cannot read ({e.strerror or e})") from None
    text = _decode(raw.removeprefix(b"\xef\xbb\xbf"), path)
    try:
        obj = json.loads(text, parse_int=_parse_int)  # NaN stays: the pipeline's own files may hold it
    except json.JSONDecodeError as e:
        raise HumpbackError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    except ValueError as e:  # _parse_int's
        raise HumpbackError(f"{path}: invalid JSON ({e})") from None
    except RecursionError:
        raise HumpbackError(f"{path}: JSON nested too deeply") from None
    if not isinstance(obj, list) or not all(isinstance(r, dict) for r in obj):
        got = json_type(obj) if not isinstance(obj, list) else "an array with a non-object item"
        raise HumpbackError(f"{path}: expected a JSON array of records (objects), got {got}")
    return obj


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
