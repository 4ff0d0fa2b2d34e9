"""evaluate: on held-out pairs, response NLL and the conditioning gap of the base and the fine-tuned model;
verifiable instruction following (data/eval/ifeval.jsonl) of the base, the seed-only (M0) and the final
model; a judge's verdicts on base and final answers. Every comparison has a paired bootstrap interval."""

from humpback import formats, judge, models, paths, prompts, recipe
from humpback.config import load_params
from humpback.curation.rater import Rater
from humpback.engine import open_engine
from humpback.evaluation import ifeval, nll
from humpback.stage import run


def main():
    params = load_params()
    m, e = params.model, params.evaluate
    boot = (e.bootstrap_resamples, e.seed)
    heldout = formats.load_json(paths.HELDOUT)
    system = recipe.inference_system(params.finetune)  # every model gets the prompt the final model is used with
    tok = models.load_tokenizer(m.base, padding_side="right")
    model = models.load_model(m.base, m.load_in_4bit, m.dtype)
    others = nll.swapped(heldout, nll.derangement(len(heldout), e.seed))
    losses, gaps = {}, {}

    def score(name, scored):
        losses[name] = nll.token_losses(scored, tok, heldout, e.batch_size, e.max_length, f"NLL {name}", system)
        other = nll.token_losses(scored, tok, others, e.batch_size, e.max_length, f"NLL {name}, another instruction",
                                 system, response_tokens=e.gap_tokens)
        gaps[name] = nll.gap_items(losses[name], other, e.gap_tokens)

    score("base", model)
    from peft import PeftModel

    score("final", PeftModel.from_pretrained(model, paths.FINAL.model))
    del model
    metrics = {"dtype": models.resolve_dtype(m.dtype), "heldout_pairs": len(heldout)}
    for name in ("base", "final"):
        metrics[name] = {**nll.nll_summary(losses[name]), **nll.gap_summary(gaps[name], *boot)}
    metrics.update(nll.nll_delta(losses["base"], losses["final"], *boot))
    metrics.update(nll.gap_delta(gaps["base"], gaps["final"], *boot))

    # Every model answers the verifiable instructions, and base and final the judged held-out instructions.
    records = ifeval.load_prompts(paths.IFEVAL)[: e.ifeval_prompts or None]
    adapters = {"base": None, "final": paths.FINAL.model}
    if not recipe.is_skipped(paths.SEED_MODEL):
        adapters["seed"] = paths.SEED_MODEL
    engines = {name: open_engine(m.base, m, e.respond_batch_size, adapter=a, chat=True, engine=params.launch.engine)
               for name, a in adapters.items()}
    texts = [prompts.chat_prompt(tok, r["prompt"], system) for r in records]
    answers = {name: judge.respond(eng, texts, e.ifeval_max_new_tokens, desc=f"IFEval {name}")
               for name, eng in engines.items()}
    followed = {name: ifeval.follows(records, a) for name, a in answers.items()}
    metrics["ifeval"], by_type = ifeval.report(records, followed, *boot)
    formats.write_json(paths.IFEVAL_ANSWERS, ifeval.answer_records(records, answers, followed))
    formats.write_json(paths.IFEVAL_BY_TYPE, by_type)

    judged = heldout[: e.judged]
    verdicts = []
    if judged:
        instructions = [x["instruction"] for x in judged]
        texts = [prompts.chat_prompt(tok, i, system) for i in instructions]
        base_out = judge.respond(engines["base"], texts, e.max_new_tokens, desc="respond base")
        final_out = judge.respond(engines["final"], texts, e.max_new_tokens, desc="respond final")
        ref, adapter = recipe.judge_model(params)
        judge_engine = engines["base"] if (ref, adapter) == (m.base, None) else open_engine(
            ref, m, e.batch_size, adapter=adapter, chat=True, engine=params.launch.engine)
        if e.judge == "rater":  # the rater as fit and measured by rater_check scores each answer
            verdicts = judge.judge_by_rater(Rater.load(paths.RATER), judge_engine, instructions, base_out, final_out,
                                            e.tie_margin)
        else:  # a pairwise judge, in both orders
            verdicts = judge.judge_pairs(judge_engine, instructions, base_out, final_out)
        metrics.update(judge.judge_metrics(verdicts, *boot))
        metrics["judge"] = e.judge
    formats.write_json(paths.EVAL_SAMPLES, verdicts)
    formats.write_json(paths.metrics("evaluate"), metrics)


if __name__ == "__main__":
    run(main)
