"""What the evaluation measures of one model. The baselines (the base model and the seed-only model M0) are
measured once, by the `baselines` stage, into paths.BASELINES; `evaluate` measures the final model and
compares. So a threshold change (a new final model) does not measure the baselines again."""

from __future__ import annotations

from dataclasses import dataclass

from .. import HumpbackError, formats, judge, models, paths, prompts, recipe
from . import ifeval, nll


@dataclass
class Inputs:
    """What every model is measured on, in the prompt format the final model is used with."""

    heldout: list[dict]  # held-out pairs: NLL and the conditioning gap
    ifeval: list[dict]  # verifiable instructions
    judged: list[dict]  # held-out pairs whose instructions the base and final models answer for the judge
    system: str | None
    tokenizer: object


def load_inputs(params) -> Inputs:
    e = params.evaluate
    heldout = formats.load_json(paths.HELDOUT)
    return Inputs(heldout, ifeval.load_prompts(paths.IFEVAL)[: e.ifeval_prompts or None], heldout[: e.judged],
                  recipe.inference_system(params.finetune), models.load_tokenizer(params.model.base, padding_side="right"))


def conditioning(model, inputs: Inputs, e, name: str) -> dict:
    """Per held-out pair: the response's token losses under its own instruction (`losses`), and the
    conditioning gap against a fixed derangement of the instructions (`gap`)."""
    tok, held = inputs.tokenizer, inputs.heldout
    others = nll.swapped(held, nll.derangement(len(held), e.seed))
    losses = nll.token_losses(model, tok, held, e.batch_size, e.max_length, f"NLL {name}", inputs.system)
    other = nll.token_losses(model, tok, others, e.batch_size, e.max_length, f"NLL {name}, another instruction",
                             inputs.system, response_tokens=e.gap_tokens)
    return {"losses": losses, "gap": nll.gap_items(losses, other, e.gap_tokens)}


def answers(engine, inputs: Inputs, e, name: str, judged: bool = True) -> dict:
    """Greedy answers to the verifiable instructions (`ifeval`) and, with `judged`, to the judged held-out
    instructions (`judged`)."""
    def ask(instructions, max_new_tokens, desc):
        texts = [prompts.chat_prompt(inputs.tokenizer, i, inputs.system) for i in instructions]
        return judge.respond(engine, texts, max_new_tokens, desc=desc)

    out = {"ifeval": ask([r["prompt"] for r in inputs.ifeval], e.ifeval_max_new_tokens, f"IFEval {name}")}
    if judged and inputs.judged:
        out["judged"] = ask([x["instruction"] for x in inputs.judged], e.max_new_tokens, f"respond {name}")
    return out


def load_baselines(inputs: Inputs, e) -> dict[str, dict]:
    """paths.BASELINES (one record per model: `model`, and what was measured of it) by model name, checked
    against what evaluate measures now: a stale file is one clear line."""
    found = {r.get("model"): r for r in formats.load_json(paths.BASELINES)}
    base = found.get("base", {})
    sizes = (len(base.get("losses", [])), len(base.get("ifeval", [])), len(base.get("judged", [])))
    want = (len(inputs.heldout), len(inputs.ifeval), len(inputs.judged))
    scored = "judged_scores" in base or not inputs.judged or e.judge != "rater"
    if sizes != want or not scored:
        raise HumpbackError(f"{paths.BASELINES}: measured on {sizes} (held-out, IFEval, judged) items"
                            f"{'' if scored else ' without the rater judge scores'}; evaluate needs {want}"
                            f"{'' if e.judge != 'rater' else ' with them'}: run `dvc repro baselines`")
    return found


def compare(inputs: Inputs, measured: dict[str, dict], resamples: int, seed: int) -> tuple[dict, list, list]:
    """(metrics, IFEval answer records, IFEval per-type rows) of `measured` {"base", "final"[, "seed"]}:
    NLL and gap of base and final and their deltas, each model's IFEval accuracies and the final model's
    deltas, with paired bootstrap intervals."""
    base, final = measured["base"], measured["final"]
    metrics = {"heldout_pairs": len(inputs.heldout)}
    for name in ("base", "final"):
        m = measured[name]
        metrics[name] = {**nll.nll_summary(m["losses"]), **nll.gap_summary(m["gap"], resamples, seed)}
    metrics.update(nll.nll_delta(base["losses"], final["losses"], resamples, seed))
    metrics.update(nll.gap_delta(base["gap"], final["gap"], resamples, seed))
    given = {name: m["ifeval"] for name, m in measured.items()}
    followed = {name: ifeval.follows(inputs.ifeval, a) for name, a in given.items()}
    metrics["ifeval"], by_type = ifeval.report(inputs.ifeval, followed, resamples, seed)
    return metrics, ifeval.answer_records(inputs.ifeval, given, followed), by_type
