"""Pairwise judge for the evaluation stage: which of two responses better follows an instruction.

The judge model reads an instruction and two responses ("Response 1", "Response 2") and answers with
one digit. We read its next-token distribution over the two digit tokens instead of generating, so
each comparison is one forward pass, and P("1") / (P("1") + P("2")) is the probability it prefers
Response 1.

Small models prefer a position whatever the content (position bias). Each item is therefore judged
in both orders, the final model's response first and then second, and the verdict counts only a
preference that holds in both:

- "win":  the final response is preferred in both orders;
- "loss": the base response is preferred in both orders;
- "tie":  the preference follows the position (it flips with the order), either order is undecided
  (exactly 0.5 after rounding), or the two responses are the same text (no model call then).

Probabilities are rounded to 3 decimals and the verdict is decided on the rounded values, so the
records are the same file on any machine (up to values within 0.0005 of a rounding boundary).

Measured (benchmarks/judge_check.py): with SmolLM2-135M-Instruct as the judge, on held-out pairs of a
reference response against an off-topic, truncated or refusal response, the judge is at chance
(single-order accuracy 38-50%, mean P(good) 0.49-0.51) and most verdicts are ties; a win rate from
this judge measures nothing until the judge is a larger model.

So the default judge (`evaluate.judge: rater`) is the rater as fit and measured by the rater check
(`models/rater`): it scores each answer on the rubric's scale on its own, and the final model wins an
item when its answer's expected score is higher by at least `margin` (`judge_by_rater`). Scoring each
answer alone has no order to be biased by. A model reference (or `self`) selects the pairwise judge.
"""

from __future__ import annotations

import os

from . import prompts
from .engine import Decoding, Engine

ANSWERS = ("1", "2")  # digits: tokenizers split digits into single tokens (Llama, SmolLM2, the tiny test one)
ANSWER_LEAD = "Better response:"

JUDGE_INSTRUCTIONS = """You compare two responses written by AI assistants to the same user instruction. Decide which response follows the instruction better, as a helpful AI assistant should: it does what was asked, its content is correct and on-topic, and it is complete and clear. Judge the content only: the order in which the responses are shown does not matter, and a longer response is not better for being longer.

Answer with a single digit: 1 if Response 1 is better, 2 if Response 2 is better.

"""


def judge_item(instruction: str, first: str, second: str) -> str:
    """The per-item part of the judge's prompt (user content after the fixed instructions)."""
    return (f"### Instruction:\n{instruction.strip()}\n\n### Response 1:\n{first.strip()}\n\n"
            f"### Response 2:\n{second.strip()}\n\nWhich response is better, 1 or 2?")


def judge_prompt_parts(tokenizer) -> tuple[str, str]:
    """(shared prefix, tail): a prompt is `prefix + judge_item(...) + tail`, in the judge's chat format if
    it has one. The tail closes the user turn, opens the assistant's and ends with the answer lead."""
    head, tail = prompts.chat_parts(tokenizer, JUDGE_INSTRUCTIONS, "\n\n")
    return head, tail + ANSWER_LEAD


def answer_candidates(tokenizer, lead: str = ANSWER_LEAD, answers: tuple[str, ...] = ANSWERS) -> tuple[str, list[int]]:
    """Text to append after `lead`, and the token ids of `answers` the model may write next
    (`prompts.answer_candidates`, as the rater reads its score digits)."""
    found = prompts.answer_candidates(tokenizer, lead, answers)
    if found is None:
        raise ValueError(f"the judge's tokenizer has no single token for each answer {', '.join(answers)}")
    return found


def judge_prompts(tokenizer, instructions: list[str], firsts: list[str],
                  seconds: list[str]) -> tuple[str, list[str], list[int]]:
    """(shared prefix, per-item suffixes ending right before the answer digit, the answer token ids)."""
    head, tail = judge_prompt_parts(tokenizer)
    joiner, candidates = answer_candidates(tokenizer)
    suffixes = [judge_item(i, a, b) + tail + joiner for i, a, b in zip(instructions, firsts, seconds)]
    return head, suffixes, candidates


def prefer_first(engine: Engine, instructions: list[str], firsts: list[str], seconds: list[str],
                 desc: str = "judge") -> list[float]:
    """P(Response 1 is better) for each item, normalised over the two answer tokens (one forward pass each)."""
    tok = engine.tok
    adds_special = tok("x")["input_ids"] != tok("x", add_special_tokens=False)["input_ids"]
    if tok.chat_template and engine.add_special_tokens and adds_special:
        raise ValueError("the judge prompt is in the chat template, which holds its own special tokens: "
                         "open the judge's engine with chat=True")
    head, suffixes, candidates = judge_prompts(tok, instructions, firsts, seconds)
    probs = engine.next_token_probs(head, suffixes, candidates, desc=desc)
    return [p1 / (p1 + p2) if p1 + p2 > 0 else 0.5 for p1, p2 in probs]


def verdict(p_final_first: float, p_final_second: float) -> str:
    """The rule: "win" if the final response is preferred in both orders, "loss" if the base one is,
    else "tie" (the preference flips with the order, or an order is exactly undecided)."""
    if p_final_first > 0.5 and p_final_second > 0.5:
        return "win"
    if p_final_first < 0.5 and p_final_second < 0.5:
        return "loss"
    return "tie"


def same_text(a: str, b: str) -> bool:
    return a.strip() == b.strip()


def judge_pairs(engine: Engine, instructions: list[str], base_responses: list[str], final_responses: list[str],
                desc: str = "judge") -> list[dict]:
    """Judge the final model's response against the base model's, per instruction, in both orders.

    `p_final_first`: P(final preferred) with the final response shown as Response 1;
    `p_final_second`: the same with it shown as Response 2. Both orders of all items go to the engine
    in one call (batched, cached). Identical responses (after stripping whitespace) are ties at 0.5
    without a model call.
    """
    if not len(instructions) == len(base_responses) == len(final_responses):
        raise ValueError("judge_pairs needs as many base and final responses as instructions")
    todo = [i for i, (b, f) in enumerate(zip(base_responses, final_responses)) if not same_text(b, f)]
    ins = [instructions[i] for i in todo]
    base = [base_responses[i] for i in todo]
    final = [final_responses[i] for i in todo]
    # order A: final is Response 1; order B: base is Response 1 (final is Response 2)
    p_first = prefer_first(engine, ins + ins, final + base, base + final, desc=desc) if todo else []
    scored = {i: (p_first[k], 1 - p_first[len(todo) + k]) for k, i in enumerate(todo)}
    records = []
    for i, (instruction, b, f) in enumerate(zip(instructions, base_responses, final_responses)):
        p_a, p_b = scored.get(i, (0.5, 0.5))
        p_a, p_b = round(p_a, 3), round(p_b, 3)
        records.append({"instruction": instruction, "base": b, "final": f,
                        "p_final_first": p_a, "p_final_second": p_b, "verdict": verdict(p_a, p_b)})
    return records


def verdict_by_scores(score_base: float | None, score_final: float | None, margin: float) -> str:
    if score_base is None or score_final is None:  # a generate-mode rater wrote no score
        return "tie"
    diff = score_final - score_base
    return "win" if diff >= margin else "loss" if diff <= -margin else "tie"


def rater_scores(rater, engine: Engine, instructions: list[str], responses: list[str]) -> list[float | None]:
    """The fitted rubric rater's (`curation.rater.Rater`) expected score 1-5 of each answer, scored alone."""
    if len(instructions) != len(responses):
        raise ValueError("rater_scores needs as many responses as instructions")
    pairs = [{"instruction": i, "response": r} for i, r in zip(instructions, responses)]
    return [r["score_expected"] for r in rater.rate(engine, pairs)]


def judge_by_scores(instructions: list[str], base_responses: list[str], final_responses: list[str],
                    score_base: list[float | None], score_final: list[float | None], margin: float) -> list[dict]:
    """The final model wins (loses) an item when its answer's score is higher (lower) by at least `margin`;
    identical answers tie."""
    if not len(instructions) == len(base_responses) == len(final_responses) == len(score_base) == len(score_final):
        raise ValueError("judge_by_scores needs as many base and final responses and scores as instructions")
    return [{"instruction": ins, "base": b, "final": f, "score_base": sb, "score_final": sf,
             "verdict": "tie" if same_text(b, f) else verdict_by_scores(sb, sf, margin)}
            for ins, b, f, sb, sf in zip(instructions, base_responses, final_responses, score_base, score_final)]


def judge_by_rater(rater, engine: Engine, instructions: list[str], base_responses: list[str],
                   final_responses: list[str], margin: float) -> list[dict]:
    """Judge with the fitted rubric rater: each answer gets its expected score 1-5 (`rater_scores`), then
    `judge_by_scores`."""
    if not len(instructions) == len(base_responses) == len(final_responses):
        raise ValueError("judge_by_rater needs as many base and final responses as instructions")
    scores = rater_scores(rater, engine, instructions + instructions, base_responses + final_responses)
    n = len(instructions)
    return judge_by_scores(instructions, base_responses, final_responses, scores[:n], scores[n:], margin)


def judge_metrics(verdicts: list, resamples: int | None = None, seed: int = 0) -> dict:
    """Win, tie and loss rates of the final model over the base model, rounded to 4 dp, with 95% bootstrap
    intervals over items (`win_rate_ci`, `loss_rate_ci`) when `resamples` is given.

    `verdicts`: the records of `judge_pairs` or their verdict strings. With nothing judged the rates are
    None (not 0: no evidence is not a zero win rate). The rates sum to 1 up to rounding (the tie rate
    takes the remainder, so they sum to exactly 1.0 at 4 dp)."""
    labels = [v["verdict"] if isinstance(v, dict) else v for v in verdicts]
    unknown = set(labels) - {"win", "tie", "loss"}
    if unknown:
        raise ValueError(f"unknown verdict(s): {', '.join(sorted(map(str, unknown)))}")
    n = len(labels)
    if not n:
        return {"judged": 0, "win_rate": None, "tie_rate": None, "loss_rate": None}
    win = round(labels.count("win") / n, 4)
    loss = round(labels.count("loss") / n, 4)
    out = {"judged": n, "win_rate": win, "tie_rate": round(1 - win - loss, 4), "loss_rate": loss}
    if resamples:
        from .evaluation.bootstrap import interval

        for name in ("win", "loss"):
            out[f"{name}_rate_ci"] = interval(lambda x: x.mean(), [[v == name for v in labels]], resamples, seed)
    return out


def shared_prefix(texts: list[str]) -> int:
    """Where to split prompts into a shared prefix and per-prompt suffixes: just after the last newline
    they all share, when every prompt goes on with a non-space character there and keeps a non-empty
    suffix; else 0. With byte-level BPE tokenizers (SmolLM2, GPT-2, Llama 3) a newline before text is a
    token boundary, so the split prompt is encoded as the whole one would be; a chat template's system
    turn and user-turn opening become the prefix, computed once."""
    if not texts:
        return 0
    common = os.path.commonprefix(texts)
    shortest = min(len(p) for p in texts)
    cut = common.rfind("\n", 0, shortest - 1) + 1
    if cut and all(not p[cut].isspace() for p in texts):
        return cut
    return 0


def respond(engine: Engine, texts: list[str], max_new_tokens: int, desc: str = "respond") -> list[str]:
    """Greedy responses to full prompts rendered by the caller (who owns the format).

    The engine adds special tokens (BOS) only to a prefix: use it with prompts that hold their own
    (an engine opened with `chat=True` on chat-template prompts), or that share a line-ended prefix."""
    cut = shared_prefix(texts)
    prefix = texts[0][:cut] if cut else ""
    return engine.generate(prefix, [p[cut:] for p in texts], Decoding(max_new_tokens=max_new_tokens), desc=desc)
