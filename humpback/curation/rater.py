"""Self-curation, part 1: the rater scores each (instruction, response) pair on the paper's 5-point
rubric. Its prompt, the signals it is read by (the score digits' distribution, its hidden state,
relevance), and the `Rater` that turns them into a rating, as fit and measured by the rater check."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import torch

from .. import HumpbackError, formats, prompts
from ..engine import Decoding, Engine
from .check import backtranslated_metrics, rater_check_items, rater_check_metrics, rating_metrics
from .probe import expected, fit_cuts, fit_probe, gated_probs, rating

SCORE_LEAD = "Score:"
SCORE_DIGITS = "12345"


def rater_prompt_parts(tokenizer, scoring: str) -> tuple[str, str]:
    """(shared prefix, per-pair template with `{pair}`) for the rater, in its chat format if it has one."""
    head, tail = prompts.chat_parts(tokenizer, prompts.rater_prefix(), "\n")
    tail = tail.replace("{", "{{").replace("}", "}}")
    return head, "{pair}" + tail + (SCORE_LEAD if scoring == "expected" else "")


def digit_candidates(tokenizer) -> tuple[str, list[int]]:
    """Text to append after `Score:` and the token ids of "1".."5" that the model may write next."""
    found = prompts.answer_candidates(tokenizer, SCORE_LEAD, SCORE_DIGITS)
    if found is None:
        raise ValueError("the rater's tokenizer has no single token for each score digit 1-5")
    return found


# ---------------------------------------------------------------------------------------------------
# What the rater is read by, beyond its written score.

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
    head, suffixes, candidates = rater_suffixes(engine.tok, [{"instruction": i, "response": r} for i, r in CONTENT_FREE])
    feats = engine.next_token_features(head, suffixes, candidates, desc="calibrate")
    probs = torch.tensor([f["logprobs"] for f in feats]).softmax(-1).mean(0)
    return probs.log().tolist()


def response_logprobs(engine: Engine, instructions: list[str], responses: list[str], max_tokens: int,
                      desc: str) -> list[dict]:
    """log p(response | instruction) in the chat template (`logprob`, summed, and `tokens`), over the first
    `max_tokens` tokens of each response."""
    tok = engine.tok
    heads = [tok.decode(tok(r, add_special_tokens=False)["input_ids"][:max_tokens]) for r in responses]
    # The template's head (e.g. a system prompt) is the same for every prompt: computed once, shared.
    shared = os.path.commonprefix([prompts.chat_prompt(tok, "a"), prompts.chat_prompt(tok, "b")])
    prompts_ = [prompts.chat_prompt(tok, i)[len(shared):] for i in instructions]
    return engine.continuation_logprobs(shared, prompts_, heads, desc=desc)


def relevance(engine: Engine, pairs: list[dict], max_tokens: int) -> list[float]:
    """How much the instruction raises the response's likelihood: per-token PMI,
    (log p(response | instruction) - log p(response | empty instruction)) / tokens, over the first
    `max_tokens` tokens of the response. An answer to another question scores near or below 0."""
    responses = [p["response"] for p in pairs]
    with_instr = response_logprobs(engine, [p["instruction"] for p in pairs], responses, max_tokens, "relevance")
    without = response_logprobs(engine, [""] * len(pairs), responses, max_tokens, "relevance (no instruction)")
    return [(a["logprob"] - b["logprob"]) / max(a["tokens"], 1) for a, b in zip(with_instr, without)]


def rater_features(engine: Engine, pairs: list[dict], relevance_tokens: int) -> list[dict]:
    """Per pair: the rater's digit log-probabilities after `Score:`, its hidden state there, and relevance."""
    head, suffixes, candidates = rater_suffixes(engine.tok, pairs)
    feats = engine.next_token_features(head, suffixes, candidates, desc="rate")
    rel = relevance(engine, pairs, relevance_tokens)
    return [{**f, "relevance": r} for f, r in zip(feats, rel)]


# ---------------------------------------------------------------------------------------------------
# The rater, as fit on the dev part of the rater check.

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
    Distribution modes keep the probability-weighted mean (`score_expected`) for ranking, and rate a pair
    (`score`, the integer 1-5 the threshold compares, like the paper's rating) by cut points on it, fit on
    the backtranslated dev pairs (probe.fit_cuts); a rater fit without them, by its most likely level.
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

        meta_path = os.path.join(path, "rater.json")
        if not os.path.exists(meta_path):
            raise HumpbackError(f"{meta_path} not found: run the rater_check stage first (dvc repro)")
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
        tensors = load_file(os.path.join(path, "rater.safetensors"))
        return cls(meta["scoring"], meta["max_new_tokens"], meta["relevance_tokens"], dict(tensors), meta["fit"])

    def probabilities(self, engine: Engine, pairs: list[dict]):
        """`[len(pairs), 5]` distribution over levels 1..5, and per-pair relevance (probe only, else None)."""
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
        for i, (p, dist, score) in enumerate(zip(pairs, probs.tolist(), rating(self.tensors, probs))):
            dist = [round(q, 3) for q in dist]
            record = {**p, "score": score, "score_expected": round(sum((k + 1) * q for k, q in enumerate(dist)), 2),
                      "probabilities": dist}
            if rel is not None:
                record["relevance"] = round(rel[i], 3)
            record["rater_output"] = f"P(1..5) = {', '.join(f'{q:.3f}' for q in dist)}" + (
                f"; relevance {rel[i]:.3f}" if rel is not None else "")
            record["reasoning"] = ""
            rated.append(record)
        return rated


def _round_tensor(t, digits: int):
    return torch.round(t.float() * 10**digits) / 10**digits


def probe_items(backtranslated: list[dict]) -> list[dict]:
    """Hand-labelled backtranslated pairs as probe items: the labelled rating is the level, `fits` kept."""
    return [{"id": p["id"], "response_id": p["response_id"], "instruction": p["instruction"],
             "response": p["response"], "level": p["rating"], "offtopic": False, "fits": p["fits"]}
            for p in backtranslated]


def fit_rater(engine: Engine, pairs: list[dict], scoring: str, max_new_tokens: int = 96,
              relevance_tokens: int = 96, l2: float = 10.0, backtranslated: list[dict] = ()) -> Rater:
    """Fit what `scoring` needs on the dev parts of the rater check: the constructed `pairs` and the
    hand-labelled `backtranslated` pairs. Distribution modes get cut points on the expected score, from the
    backtranslated dev pairs (the pairs `rate` sees are like them); the probe's head and gate fit on both
    parts. `generate` writes its own integer."""
    if scoring not in SCORINGS:
        raise ValueError(f"scoring must be one of {', '.join(SCORINGS)}, not {scoring!r}")
    rater = Rater(scoring, max_new_tokens, relevance_tokens)
    real = probe_items([p for p in backtranslated if p["split"] == "dev"])
    if scoring == "calibrated":
        rater.tensors["calibration"] = torch.tensor(content_free_logprobs(engine))
        rater.fit = {"content_free_pairs": len(CONTENT_FREE)}
    if scoring == "probe":
        constructed = rater_check_items(pairs, "dev")
        feats = rater_features(engine, constructed + real, relevance_tokens)
        feats = [{**f, "hidden": [round(x, 3) for x in f["hidden"]], "relevance": round(f["relevance"], 3),
                  "logprobs": [round(x, 3) for x in f["logprobs"]]} for f in feats]
        rater.tensors.update(fit_probe(constructed + real, feats, l2))
        rater.fit = {"dev_pairs": len(constructed), "backtranslated_dev_pairs": len(real), "l2": l2,
                     "dev_instructions": len({it["instruction_id"] for it in constructed})}
    if scoring != "generate" and real:
        if scoring == "probe":  # the final fit's own scores of the backtranslated dev pairs
            scores = expected(gated_probs(rater.tensors, feats[len(constructed):])).tolist()
        else:
            scores = expected(rater.probabilities(engine, real)[0]).tolist()
            rater.fit["backtranslated_dev_pairs"] = len(real)
        rater.tensors["cuts"] = fit_cuts(scores, [it["level"] for it in real])
    return rater


def check_rater(engine: Engine, pairs: list[dict], backtranslated: list[dict], c) -> tuple[Rater, list[dict], dict]:
    """Fit the scoring mode `c.scoring` on the dev parts of the rater check, then rate both test parts:
    (the fit rater, the rated constructed test items, the metrics of each part: `constructed`,
    `backtranslated`)."""
    rater = fit_rater(engine, pairs, c.scoring, c.max_new_tokens, c.relevance_tokens, c.probe_l2, backtranslated)
    items = rater_check_items(pairs, "test")
    rated = rater.rate(engine, items)
    constructed = {**rater_check_metrics(items, [r["score_expected"] for r in rated]), **rating_metrics(items, rated),
                   "precision_at_5": rating_metrics(items, rated, 5)["precision_at_5"]}
    constructed["auc_fit"] = constructed.pop("auc_offtopic")  # here the pairs that do not fit are the swaps
    real = [p for p in backtranslated if p["split"] == "test"]
    real_rated = rater.rate(engine, [{"instruction": p["instruction"], "response": p["response"]} for p in real])
    return rater, rated, {"constructed": constructed, "backtranslated": backtranslated_metrics(real, real_rated)}
