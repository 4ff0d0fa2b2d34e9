"""evaluate: the final model against the baselines (stages/baselines.py): on held-out pairs, response NLL
and the conditioning gap (base, final); verifiable instruction following (data/eval/ifeval.jsonl) of the
base, the final and the seed-only (M0) model; a judge's verdicts on base and final answers. Every
comparison has a paired bootstrap interval."""

from humpback import formats, judge, models, paths, recipe
from humpback.config import load_params
from humpback.curation.rater import Rater
from humpback.engine import open_engine
from humpback.evaluation import measure
from humpback.stage import run


def main():
    params = load_params()
    m, e = params.model, params.evaluate
    inputs = measure.load_inputs(params)
    baselines = measure.load_baselines(inputs, e)
    from peft import PeftModel

    # Unmerged: merged bf16 weights round the LoRA update (NLL +0.0015; benchmarks/bench_eval.py).
    model = PeftModel.from_pretrained(models.load_model(m.base, m.load_in_4bit, m.dtype), paths.FINAL.model)
    final = measure.conditioning(model, inputs, e, "final")
    del model
    engine = open_engine(m.base, m, e.respond_batch_size, adapter=paths.FINAL.model, chat=True,
                         engine=params.launch.engine)
    final.update(measure.answers(engine, inputs, e, "final"))
    base = baselines["base"]
    measured = {"base": base, "final": final, **({"seed": baselines["seed"]} if "seed" in baselines else {})}
    compared, answers, by_type = measure.compare(inputs, measured, e.bootstrap_resamples, e.seed)
    metrics = {"dtype": models.resolve_dtype(m.dtype), **compared}
    formats.write_json(paths.IFEVAL_ANSWERS, answers)
    formats.write_json(paths.IFEVAL_BY_TYPE, by_type)

    verdicts = []
    if inputs.judged:
        instructions = [x["instruction"] for x in inputs.judged]
        ref, adapter = recipe.judge_model(params)
        judge_engine = open_engine(ref, m, e.batch_size, adapter=adapter, chat=True, engine=params.launch.engine)
        if e.judge == "rater":  # the rater as fit and measured by rater_check scores each answer
            scores = judge.rater_scores(Rater.load(paths.RATER), judge_engine, instructions, final["judged"])
            verdicts = judge.judge_by_scores(instructions, base["judged"], final["judged"], base["judged_scores"],
                                             scores, e.tie_margin)
        else:  # a pairwise judge, in both orders
            verdicts = judge.judge_pairs(judge_engine, instructions, base["judged"], final["judged"])
        metrics.update(judge.judge_metrics(verdicts, e.bootstrap_resamples, e.seed))
        metrics["judge"] = e.judge
    formats.write_json(paths.EVAL_SAMPLES, verdicts)
    formats.write_json(paths.metrics("evaluate"), metrics)


if __name__ == "__main__":
    run(main)
