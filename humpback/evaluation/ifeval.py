"""Verifiable instruction following on data/eval/ifeval.jsonl: load the prompts, score answers with the
checkers (constraints.py), and report IFEval's strict accuracies with paired bootstrap intervals.

- prompt level: the share of prompts whose every instruction is followed;
- instruction level: the share of all instructions followed (IFEval's `inst_level_strict_acc`).
"""

from __future__ import annotations

import inspect

from .. import HumpbackError, formats
from .bootstrap import interval
from .constraints import CHECKERS

FIELDS = ("key", "prompt", "instruction_id_list", "kwargs")


def _kwargs_error(iid: str, kwargs) -> str | None:
    if not isinstance(kwargs, dict):
        return f"kwargs for {iid!r} must be an object"
    sig = inspect.signature(CHECKERS[iid])
    try:
        sig.bind("", **kwargs)
    except TypeError as e:
        return f"kwargs for {iid!r} do not fit its checker ({e})"
    for name, value in kwargs.items():
        kind = sig.parameters[name].annotation
        ok = {"int": isinstance(value, int) and not isinstance(value, bool) and value >= 0,
              "str": isinstance(value, str) and bool(value.strip()),
              "list[str]": isinstance(value, list) and bool(value) and all(isinstance(v, str) and v.strip()
                                                                          for v in value),
              }.get(kind, False)  # constraints.py's annotations, as text (postponed evaluation)
        if not ok:
            return f"kwargs for {iid!r}: {name} must be {kind}, not {value!r}"[:200]
    return None


def load_prompts(path: str) -> list[dict]:
    """The records of an IFEval-format JSONL file; a record that cannot be checked is one error line
    naming the file and line (an evaluation set with a silently dropped prompt would mean another set)."""
    records = []
    for where, rec in formats.read_jsonl(path):
        if not isinstance(rec, dict) or any(f not in rec for f in FIELDS):
            raise HumpbackError(f"{where}: an evaluation record needs the fields {', '.join(FIELDS)}")
        ids, kwargs = rec["instruction_id_list"], rec["kwargs"]
        if not isinstance(rec["prompt"], str) or not rec["prompt"].strip():
            raise HumpbackError(f"{where}: `prompt` must be non-empty text")
        if not isinstance(ids, list) or not ids or not isinstance(kwargs, list) or len(ids) != len(kwargs):
            raise HumpbackError(f"{where}: `instruction_id_list` and `kwargs` must be lists of the same length")
        for iid, kw in zip(ids, kwargs):
            if not isinstance(iid, str) or iid not in CHECKERS:
                raise HumpbackError(f"{where}: unknown instruction id {iid!r} (known: {', '.join(sorted(CHECKERS))})")
            if why := _kwargs_error(iid, kw):
                raise HumpbackError(f"{where}: {why}")
        records.append(rec)
    if not records:
        raise HumpbackError(f"{path}: no evaluation prompts")
    return records


def follows(records: list[dict], responses: list[str]) -> list[list[bool]]:
    """Per prompt, whether each of its instructions is followed (strict)."""
    return [[CHECKERS[i](resp, **kw) for i, kw in zip(r["instruction_id_list"], r["kwargs"])]
            for r, resp in zip(records, responses)]


def _prompt_level(rows):
    return [float(all(r)) for r in rows]


def accuracy(records: list[dict], rows: list[list[bool]], resamples: int, seed: int) -> dict:
    """Strict prompt- and instruction-level accuracy with 95% bootstrap intervals (over prompts), and
    the instruction-level accuracy per constraint type."""
    prompt = _prompt_level(rows)
    passed, total = [sum(r) for r in rows], [len(r) for r in rows]
    by_type: dict[str, list[float]] = {}
    for rec, row in zip(records, rows):
        for iid, ok in zip(rec["instruction_id_list"], row):
            by_type.setdefault(iid, []).append(float(ok))
    return {
        "prompt_level_accuracy": round(sum(prompt) / len(prompt), 4),
        "prompt_level_accuracy_ci": interval(lambda p: p.mean(), [prompt], resamples, seed),
        "instruction_level_accuracy": round(sum(passed) / sum(total), 4),
        "instruction_level_accuracy_ci": interval(lambda a, b: a.sum() / b.sum(), [passed, total], resamples, seed),
        "by_type": {t: {"accuracy": round(sum(v) / len(v), 4), "n": len(v),
                        "accuracy_ci": interval(lambda x: x.mean(), [v], resamples, seed)}
                    for t, v in sorted(by_type.items())},
    }


def accuracy_delta(rows_a: list[list[bool]], rows_b: list[list[bool]], resamples: int, seed: int) -> dict:
    """b minus a, at prompt and instruction level, with paired bootstrap intervals over prompts."""
    pa, pb = _prompt_level(rows_a), _prompt_level(rows_b)
    sa, sb, n = [sum(r) for r in rows_a], [sum(r) for r in rows_b], [len(r) for r in rows_a]
    return {
        "prompt_level_delta": round((sum(pb) - sum(pa)) / len(pa), 4),
        "prompt_level_delta_ci": interval(lambda a, b: b.mean() - a.mean(), [pa, pb], resamples, seed),
        "instruction_level_delta": round((sum(sb) - sum(sa)) / sum(n), 4),
        "instruction_level_delta_ci": interval(lambda a, b, t: (b.sum() - a.sum()) / t.sum(), [sa, sb, n],
                                                      resamples, seed),
    }


def report(records: list[dict], followed: dict[str, list[list[bool]]], resamples: int,
           seed: int) -> tuple[dict, list[dict]]:
    """(metrics, per-type rows): each model's accuracies, and the final model's deltas over the base and
    the seed-only model; per constraint type, each model's instruction-level accuracy and interval."""
    per_model = {name: accuracy(records, rows, resamples, seed) for name, rows in followed.items()}
    metrics = {"prompts": len(records), "instructions": sum(len(r["instruction_id_list"]) for r in records)}
    metrics.update({name: {k: v for k, v in acc.items() if k != "by_type"} for name, acc in per_model.items()})
    for other in ("base", "seed"):
        if other in followed and "final" in followed:
            metrics[f"final_vs_{other}"] = accuracy_delta(followed[other], followed["final"], resamples, seed)
    rows = []
    for t, first in per_model["base"]["by_type"].items():  # the same types and counts for every model
        row = {"type": t, "n": first["n"]}
        for name, acc in per_model.items():
            row[name], row[f"{name}_ci"] = acc["by_type"][t]["accuracy"], acc["by_type"][t]["accuracy_ci"]
        rows.append(row)
    return metrics, rows


def answer_records(records: list[dict], answers: dict[str, list[str]],
                   followed: dict[str, list[list[bool]]]) -> list[dict]:
    """One record per prompt: its instructions, and each model's answer and what it followed."""
    return [{"key": r["key"], "prompt": r["prompt"], "instruction_id_list": r["instruction_id_list"],
             **{name: {"answer": answers[name][i], "followed": followed[name][i]} for name in answers}}
            for i, r in enumerate(records)]
