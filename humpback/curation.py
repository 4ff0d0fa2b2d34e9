"""Self-curation: the rater scores each (instruction, response) pair, then a threshold keeps the best."""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field

from . import formats, prompts
from .engine import Decoding, Engine

SCORE_LEAD = "Score:"
SENTINEL = "\x00PAIR\x00"


def chat_parts(tokenizer, fixed: str, plain_tail: str) -> tuple[str, str]:
    """(head, tail) of a one-message user turn that opens with `fixed` text, for prompts built as
    `head + item + tail`: the head is the same for every item (its KV cache is shared). In the chat format
    the tail closes the user turn and opens the assistant's; without a chat template it is `plain_tail`."""
    if not tokenizer.chat_template:
        return fixed, plain_tail
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": fixed + SENTINEL}], add_generation_prompt=True, tokenize=False
    )
    head, tail = text.split(SENTINEL)
    return head, tail


def rater_prompt_parts(tokenizer, scoring: str) -> tuple[str, str]:
    """(shared prefix, per-pair template with `{pair}`) for the rater, in its chat format if it has one."""
    head, tail = chat_parts(tokenizer, prompts.rater_prefix(), "\n")
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


SCORINGS = ("generate", "expected", "calibrated", "probe")


@dataclass
class Rater:
    """How the rater's output becomes a rubric rating 1-5, with what each scoring mode fit on the dev
    part of the rater check (data/rater_check). Saved as a directory, a DVC out, so that `rate` uses
    exactly what `rater_check` measured.

    - `generate`: the rater reasons, then writes `Score: N` (parsed; None if unparsable).
    - `expected`: the rater's distribution over "1".."5" right after `Score:`.
    - `calibrated`: that distribution divided by the one it gives content-free pairs (Zhao et al. 2021).
    - `probe`: a linear head on the rater's hidden state after `Score:` maps it to the five levels, and
      the response's relevance to the instruction (per-token PMI) moves off-topic pairs to 1.
    Distribution modes rate a pair by its most likely level (`score`, the integer the threshold compares,
    like the paper's rating) and keep the probability-weighted mean (`score_expected`) for ranking.
    """

    scoring: str
    max_new_tokens: int = 96
    relevance_tokens: int = 96
    tensors: dict = field(default_factory=dict)  # calibration, probe head and gate, as fit
    fit: dict = field(default_factory=dict)  # what was fit on, for the record

    def save(self, path: str) -> None:
        from safetensors.torch import save_file

        os.makedirs(path, exist_ok=True)
        meta = {"scoring": self.scoring, "max_new_tokens": self.max_new_tokens,
                "relevance_tokens": self.relevance_tokens, "fit": self.fit}
        formats.write_json(os.path.join(path, "rater.json"), meta)
        # rounded: the same dev features give the same file on any CPU (issue: same inputs, same hashes)
        save_file({k: _round_tensor(v, 4) for k, v in self.tensors.items()}, os.path.join(path, "rater.safetensors"))

    @classmethod
    def load(cls, path: str) -> "Rater":
        from safetensors.torch import load_file

        from . import HumpbackError

        meta_path = os.path.join(path, "rater.json")
        if not os.path.exists(meta_path):
            raise HumpbackError(f"{meta_path} not found: run the rater_check stage first (dvc repro)")
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
        tensors = load_file(os.path.join(path, "rater.safetensors"))
        return cls(meta["scoring"], meta["max_new_tokens"], meta["relevance_tokens"], dict(tensors), meta["fit"])

    def probabilities(self, engine: Engine, pairs: list[dict]):
        """`[len(pairs), 5]` distribution over levels 1..5, and per-pair relevance (probe only, else None)."""
        import torch

        if self.scoring == "probe":
            feats = rater_features(engine, pairs, self.relevance_tokens)
            return gated_probs(self.tensors, feats), [f["relevance"] for f in feats]
        head, suffixes, candidates = rater_suffixes(engine.tok, pairs)
        feats = engine.next_token_features(head, suffixes, candidates, desc="rate")
        logprobs = torch.tensor([f["logprobs"] for f in feats])
        if self.scoring == "calibrated":
            logprobs = logprobs - self.tensors["calibration"]
        return logprobs.softmax(-1), None

    def rate(self, engine: Engine, pairs: list[dict]) -> list[dict]:
        if self.scoring == "generate":
            head, template = rater_prompt_parts(engine.tok, "generate")
            suffixes = [template.format(pair=prompts.rater_pair(p["instruction"], p["response"])) for p in pairs]
            outputs = engine.generate(head, suffixes, Decoding(max_new_tokens=self.max_new_tokens), desc="rate")
            rated = []
            for p, out in zip(pairs, outputs):
                score, reasoning = prompts.parse_score(out)
                rated.append({**p, "score": score, "score_expected": score, "rater_output": out,
                              "reasoning": reasoning})
            return rated
        probs, rel = self.probabilities(engine, pairs)
        rated = []
        for i, (p, dist) in enumerate(zip(pairs, probs.tolist())):
            dist = [round(q, 3) for q in dist]
            record = {**p, "score": 1 + max(range(5), key=lambda k: (dist[k], -k)),  # ties: the lower level
                      "score_expected": round(sum((k + 1) * q for k, q in enumerate(dist)), 2),
                      "probabilities": dist}
            if rel is not None:
                record["relevance"] = round(rel[i], 3)
            record["rater_output"] = f"P(1..5) = {', '.join(f'{q:.3f}' for q in dist)}" + (
                f"; relevance {rel[i]:.3f}" if rel is not None else "")
            record["reasoning"] = ""
            rated.append(record)
        return rated


def _round_tensor(t, digits: int):
    import torch

    return torch.round(t.float() * 10**digits) / 10**digits


def fit_rater(engine: Engine, pairs: list[dict], scoring: str, max_new_tokens: int = 96,
              relevance_tokens: int = 96, l2: float = 10.0) -> Rater:
    """Fit what `scoring` needs on the dev part of the rater check (nothing for generate/expected)."""
    import torch

    if scoring not in SCORINGS:
        raise ValueError(f"scoring must be one of {', '.join(SCORINGS)}, not {scoring!r}")
    rater = Rater(scoring, max_new_tokens, relevance_tokens)
    if scoring == "calibrated":
        rater.tensors["calibration"] = torch.tensor(content_free_logprobs(engine))
        rater.fit = {"content_free_pairs": len(CONTENT_FREE)}
    elif scoring == "probe":
        items = rater_check_items(pairs, "dev")
        feats = rater_features(engine, items, relevance_tokens)
        feats = [{**f, "hidden": [round(x, 3) for x in f["hidden"]], "relevance": round(f["relevance"], 3),
                  "logprobs": [round(x, 3) for x in f["logprobs"]]} for f in feats]
        rater.tensors.update(fit_head(items, feats, l2=l2))
        rater.tensors.update({f"gate_{k}": v for k, v in fit_gate(items, feats).items()})
        rater.fit = {"dev_pairs": len(items), "l2": l2,
                     "dev_instructions": len({it["instruction_id"] for it in items})}
    return rater


def check_rater(engine: Engine, pairs: list[dict], c) -> tuple[Rater, list[dict], dict]:
    """Fit the scoring mode `c.scoring` on the dev part of the rater check, then rate its test part:
    (the fit rater, the rated test items, the rater-check metrics)."""
    rater = fit_rater(engine, pairs, c.scoring, c.max_new_tokens, c.relevance_tokens, c.probe_l2)
    items = rater_check_items(pairs, "test")
    rated = rater.rate(engine, items)
    metrics = rater_check_metrics(items, [r["score_expected"] for r in rated])
    return rater, rated, {**metrics, **rating_metrics(items, rated)}


def score_histogram(rated: list[dict]) -> list[dict]:
    """Counts per rating 1..5 plus an `unparsable` bin."""
    counts = Counter("unparsable" if r["score"] is None else str(int(r["score"])) for r in rated)
    return [{"score": b, "count": counts.get(b, 0)} for b in ("1", "2", "3", "4", "5", "unparsable")]


def rate_metrics(rated: list[dict]) -> dict:
    scores = [r["score"] for r in rated if r["score"] is not None]
    expected = [r["score_expected"] for r in rated if r.get("score_expected") is not None]
    return {
        "rated": len(rated),
        "scored": len(scores),
        "unparsable": len(rated) - len(scores),
        "mean_score": round(sum(scores) / len(scores), 2) if scores else None,
        "mean_score_expected": round(sum(expected) / len(expected), 2) if expected else None,
        "histogram": {h["score"]: h["count"] for h in score_histogram(rated)},
    }


def curate(rated: list[dict], threshold: float, selection: str = "score", seed: int = 0) -> list[dict]:
    """Keep the pairs rated at or above the threshold; unparsable ones are never kept.

    `selection: random` keeps a seeded random subset of the scored pairs, of the same size as the
    threshold keeps: the control that tells what the rater's choice is worth (the paper's Fig. 3)."""
    kept = [r for r in rated if r["score"] is not None and r["score"] >= threshold]
    if selection == "score":
        return kept
    scored = [r for r in rated if r["score"] is not None]
    chosen = set(r["id"] for r in formats.shuffled(scored, seed)[: len(kept)])
    return [r for r in scored if r["id"] in chosen]  # in rated order, like `score`


def curate_metrics(rated: list[dict], threshold: float, selection: str = "score", seed: int = 0) -> dict:
    kept = curate(rated, threshold, selection, seed)
    return {
        "threshold": threshold,
        "selection": selection,
        "rated": len(rated),
        "kept": len(kept),
        "kept_at": {str(t): len(curate(rated, t)) for t in (3, 4, 5)},
        "kept_mean_score": round(sum(r["score"] for r in kept) / len(kept), 2) if kept else None,
    }


# ---------------------------------------------------------------------------------------------------
# Rater check: a labelled set of (instruction, response, rubric level) measures the rater every run.

RATER_CHECK_FIELDS = ("id", "instruction_id", "instruction", "response", "level", "split")


def load_rater_check(path: str) -> list[dict]:
    """The labelled pairs; a record without the fields or with a level outside 1-5 is one clear error."""
    from . import HumpbackError

    pairs = []
    for where, rec in formats.read_jsonl(path):
        if not isinstance(rec, dict):
            raise HumpbackError(f"{where}: expected a JSON object, got {formats.json_type(rec)}")
        missing = [f for f in RATER_CHECK_FIELDS if f not in rec]
        if missing:
            raise HumpbackError(f"{where}: missing field(s) {', '.join(missing)}")
        if rec["level"] not in (1, 2, 3, 4, 5) or rec["split"] not in ("dev", "test"):
            raise HumpbackError(f"{where}: level must be 1-5 and split dev or test, got {rec['level']!r}, {rec['split']!r}")
        pairs.append(rec)
    return pairs


def rater_check_items(pairs: list[dict], part: str) -> list[dict]:
    """The pairs of one part, plus off-topic pairs: each level-5 response under the next instruction
    of the same part (a swap that keeps a good answer but makes it answer the wrong question)."""
    items = [{**p, "offtopic": False} for p in pairs if p["split"] == part]
    best = sorted((p for p in items if p["level"] == 5), key=lambda p: p["instruction_id"])
    for i, p in enumerate(best):
        other = best[(i + 1) % len(best)]
        items.append({**p, "id": f"{p['id']}-offtopic", "instruction": other["instruction"], "offtopic": True})
    return items


def spearman(xs: list[float], ys: list[float]) -> float:
    """Rank correlation (ties share their mean rank); 0 when either side is constant."""
    import pandas as pd

    rho = pd.DataFrame({"x": xs, "y": ys}).corr(method="spearman").loc["x", "y"]
    return 0.0 if pd.isna(rho) else float(rho)


def auc(pos: list[float], neg: list[float]) -> float:
    """The chance that a random positive outscores a random negative (ties count half)."""
    if not pos or not neg:
        return float("nan")
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def rater_check_metrics(items: list[dict], scores: list[float | None]) -> dict:
    """spearman (score vs level), auc_high_vs_low (levels 4-5 vs 1-2), auc_offtopic (level-5 pairs vs the
    same responses under another instruction), mean_by_level. Unscored pairs count as the lowest score."""
    s = [1.0 if x is None else float(x) for x in scores]
    on = [(it, x) for it, x in zip(items, s) if not it["offtopic"]]
    level = {lv: [x for it, x in on if it["level"] == lv] for lv in range(1, 6)}
    return {
        "pairs": len(on),
        "offtopic_pairs": len(items) - len(on),
        "unscored": sum(x is None for x in scores),
        "spearman": round(spearman([x for _, x in on], [it["level"] for it, _ in on]), 3),
        "auc_high_vs_low": round(auc(level[4] + level[5], level[1] + level[2]), 3),
        "auc_offtopic": round(auc(level[5], [x for it, x in zip(items, s) if it["offtopic"]]), 3),
        "mean_by_level": {str(lv): round(sum(v) / len(v), 2) if v else None for lv, v in level.items()},
    }


def rating_metrics(items: list[dict], rated: list[dict], threshold: int = 4) -> dict:
    """The integer rating against the labels, as the paper measured its rater: exact-level accuracy,
    and the precision and recall of keeping `rating >= threshold` for pairs labelled >= threshold
    (off-topic swaps are labelled 1)."""
    truth = [1 if it["offtopic"] else it["level"] for it in items]
    got = [r["score"] for r in rated]
    keep = [g is not None and g >= threshold for g in got]
    good = [t >= threshold for t in truth]
    tp = sum(k and g for k, g in zip(keep, good))
    return {
        "rating_accuracy": round(sum(g == t for g, t in zip(got, truth)) / len(truth), 3),
        f"precision_at_{threshold}": round(tp / sum(keep), 3) if sum(keep) else None,
        f"recall_at_{threshold}": round(tp / sum(good), 3) if sum(good) else None,
        "rating_histogram": {str(lv): sum(g == lv for g in got) for lv in range(1, 6)},
    }


# ---------------------------------------------------------------------------------------------------
# Scoring signals beyond the rater's digit distribution.

CONTENT_FREE = (("N/A", "N/A"), ("", ""), ("[MASK]", "[MASK]"))


def rater_suffixes(tok, pairs: list[dict]) -> tuple[str, list[str], list[int]]:
    """(shared prefix, per-pair prompts ending in `Score:`, digit token ids) for the rubric rater."""
    head, template = rater_prompt_parts(tok, "expected")
    joiner, candidates = digit_candidates(tok)
    return head, [template.format(pair=prompts.rater_pair(p["instruction"], p["response"])) + joiner
                  for p in pairs], candidates


def content_free_logprobs(engine: Engine) -> list[float]:
    """The rater's digit distribution for content-free pairs ("Calibrate Before Use", Zhao et al. 2021):
    the mean probability over three neutral inputs, as log-probabilities renormalized over 1-5."""
    import torch

    head, suffixes, candidates = rater_suffixes(engine.tok, [{"instruction": i, "response": r} for i, r in CONTENT_FREE])
    feats = engine.next_token_features(head, suffixes, candidates, desc="calibrate")
    probs = torch.tensor([f["logprobs"] for f in feats]).softmax(-1).mean(0)
    return probs.log().tolist()


def relevance(engine: Engine, pairs: list[dict], max_tokens: int) -> list[float]:
    """How much the instruction raises the response's likelihood: per-token PMI,
    (log p(response | instruction) - log p(response | empty instruction)) / tokens, over the first
    `max_tokens` tokens of the response. An answer to another question scores near or below 0."""
    tok = engine.tok
    heads = []
    for p in pairs:
        ids = tok(p["response"], add_special_tokens=False)["input_ids"][:max_tokens]
        heads.append(tok.decode(ids))
    # The template's head (e.g. a system prompt) is the same for every prompt: computed once, shared.
    shared = os.path.commonprefix([prompts.chat_prompt(tok, "a"), prompts.chat_prompt(tok, "b")])
    prompts_ = [prompts.chat_prompt(tok, p["instruction"])[len(shared):] for p in pairs]
    with_instr = engine.continuation_logprobs(shared, prompts_, heads, desc="relevance")
    empty = prompts.chat_prompt(tok, "")[len(shared):]
    without = engine.continuation_logprobs(shared, [empty] * len(pairs), heads, desc="relevance (no instruction)")
    return [(a["logprob"] - b["logprob"]) / max(a["tokens"], 1) for a, b in zip(with_instr, without)]


def rater_features(engine: Engine, pairs: list[dict], relevance_tokens: int) -> list[dict]:
    """Per pair: the rater's digit log-probabilities after `Score:`, its hidden state there, and relevance."""
    head, suffixes, candidates = rater_suffixes(engine.tok, pairs)
    feats = engine.next_token_features(head, suffixes, candidates, desc="rate")
    rel = relevance(engine, pairs, relevance_tokens)
    return [{**f, "relevance": r} for f, r in zip(feats, rel)]


def expected(probs):
    """Probability-weighted rubric score of a `[..., 5]` distribution over 1..5."""
    import torch

    return (probs * torch.arange(1, 6, dtype=probs.dtype)).sum(-1)


def _head_inputs(feats: list[dict]):
    import torch

    return torch.tensor([f["hidden"] + f["logprobs"] + [f["relevance"]] for f in feats], dtype=torch.float32)


def fit_head(items: list[dict], feats: list[dict], l2: float = 1.0, steps: int = 500) -> dict:
    """A linear rubric head on the rater's features: multinomial logistic regression onto levels 1-5
    (off-topic pairs are level 1), L2-regularized, fit by L-BFGS on standardized inputs."""
    import torch

    x = _head_inputs(feats)
    y = torch.tensor([1 if it["offtopic"] else it["level"] for it in items]) - 1
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    z = (x - mean) / std
    w, b = _minimize(lambda w, b: torch.nn.functional.cross_entropy(z @ w + b, y) + l2 * (w ** 2).sum() / len(y),
                     torch.zeros(z.shape[1], 5), torch.zeros(5), steps=steps)
    return {"mean": mean, "std": std, "weight": w, "bias": b}


def _minimize(loss_fn, *init, steps: int):
    """The parameters, from `init`, that minimize `loss_fn(*params)`, by L-BFGS."""
    import torch

    params = [t.clone().requires_grad_(True) for t in init]
    opt = torch.optim.LBFGS(params, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = loss_fn(*params)
        loss.backward()
        return loss

    opt.step(closure)
    return [t.detach() for t in params]


def head_probs(head: dict, feats: list[dict]):
    z = (_head_inputs(feats) - head["mean"]) / head["std"]
    return (z @ head["weight"] + head["bias"]).softmax(-1)


def fit_gate(items: list[dict], feats: list[dict], steps: int = 200) -> dict:
    """P(on topic) from relevance alone: a 1-D logistic regression of answers (level >= 2) against the
    off-topic swaps. The rubric puts an answer to another question at 1, whatever its quality."""
    import torch

    on = [(f["relevance"], 1.0) for it, f in zip(items, feats) if not it["offtopic"] and it["level"] >= 2]
    off = [(f["relevance"], 0.0) for it, f in zip(items, feats) if it["offtopic"]]
    x = torch.tensor([r for r, _ in on + off])
    y = torch.tensor([t for _, t in on + off])
    weight = torch.where(y > 0, len(off) / len(on), 1.0)  # balance the two classes
    a, b = _minimize(lambda a, b: torch.nn.functional.binary_cross_entropy_with_logits(a * x + b, y, weight=weight),
                     torch.ones(1), torch.zeros(1), steps=steps)
    return {"scale": a, "bias": b}


def gated_probs(tensors: dict, feats: list[dict]):
    """The head's level distribution, with the chance of being off topic moved to level 1."""
    import torch

    p = head_probs(tensors, feats)
    on = torch.sigmoid(tensors["gate_scale"] * torch.tensor([f["relevance"] for f in feats]) + tensors["gate_bias"])[:, None]
    return on * p + (1 - on) * torch.nn.functional.one_hot(torch.zeros(len(feats), dtype=torch.long), 5)

