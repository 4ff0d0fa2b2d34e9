"""evaluate: held-out response NLL of the base model and of the fine-tuned model; then both answer held-out
instructions, and a judge compares their answers (win, tie and loss rates): the fitted rater scoring each
answer (evaluate.judge: rater), or a pairwise judge model in both orders."""

from humpback import formats, judge, models, paths, prompts, recipe
from humpback.config import load_params
from humpback.curation.rater import Rater
from humpback.engine import open_engine
from humpback.evaluation import response_nll
from humpback.stage import run


def main():
    params = load_params()
    m, e = params.model, params.evaluate
    heldout = formats.load_json(paths.HELDOUT)
    system = recipe.inference_system(params.finetune)  # both models get the prompt the final model is used with
    tok = models.load_tokenizer(m.base, padding_side="right")
    model = models.load_model(m.base, m.load_in_4bit, m.dtype)
    base = response_nll(model, tok, heldout, e.batch_size, e.max_length, desc="evaluate base", system=system)
    from peft import PeftModel

    final = response_nll(PeftModel.from_pretrained(model, paths.FINAL.model), tok, heldout, e.batch_size,
                         e.max_length, desc="evaluate final", system=system)
    del model
    metrics = {"dtype": models.resolve_dtype(m.dtype), "heldout_pairs": len(heldout), "base": base, "final": final,
               "nll_delta": round(final["nll"] - base["nll"], 4)}

    judged = heldout[: e.judged]
    if judged:
        engine = params.launch.engine
        prompts_ = [prompts.chat_prompt(tok, x["instruction"], system) for x in judged]
        base_engine = open_engine(m.base, m, e.respond_batch_size, chat=True, engine=engine)
        base_out = judge.respond(base_engine, prompts_, e.max_new_tokens, desc="respond base")
        final_out = judge.respond(open_engine(m.base, m, e.respond_batch_size, adapter=paths.FINAL.model, chat=True,
                                              engine=engine),
                                  prompts_, e.max_new_tokens, desc="respond final")
        ref, adapter = recipe.judge_model(params)
        judge_engine = base_engine if (ref, adapter) == (m.base, None) else open_engine(ref, m, e.batch_size,
                                                                                       adapter=adapter, chat=True, engine=engine)
        instructions = [x["instruction"] for x in judged]
        if e.judge == "rater":  # the rater as fit and measured by rater_check scores each answer
            rater = Rater.load(paths.RATER)
            verdicts = judge.judge_by_rater(rater, judge_engine, instructions, base_out, final_out, e.tie_margin)
        else:  # a pairwise judge, in both orders
            verdicts = judge.judge_pairs(judge_engine, instructions, base_out, final_out)
        formats.write_json(paths.EVAL_SAMPLES, verdicts)
        metrics.update(judge.judge_metrics(verdicts))
        metrics["judge"] = e.judge
    else:
        formats.write_json(paths.EVAL_SAMPLES, [])
    formats.write_json(paths.metrics("evaluate"), metrics)


if __name__ == "__main__":
    run(main)
