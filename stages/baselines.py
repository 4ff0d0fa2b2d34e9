"""baselines: what evaluate compares the final model with, measured once: the base model's held-out NLL,
conditioning gap and answers (and, under evaluate.judge: rater, the rater's scores of its judged answers),
and the seed-only model M0's answers to the verifiable instructions."""

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
    base = measure.conditioning(models.load_model(m.base, m.load_in_4bit, m.dtype), inputs, e, "base")
    engine = open_engine(m.base, m, e.respond_batch_size, chat=True, engine=params.launch.engine)
    base.update(measure.answers(engine, inputs, e, "base"))
    if inputs.judged and e.judge == "rater":  # each answer is scored alone: the base side once, here
        ref, adapter = recipe.judge_model(params)
        rater_engine = open_engine(ref, m, e.batch_size, adapter=adapter, chat=True, engine=params.launch.engine)
        base["judged_scores"] = judge.rater_scores(Rater.load(paths.RATER), rater_engine,
                                                   [x["instruction"] for x in inputs.judged], base["judged"])
    out = [{"model": "base", **base}]
    if not recipe.is_skipped(paths.SEED_MODEL):
        seed = open_engine(m.base, m, e.respond_batch_size, adapter=paths.SEED_MODEL, chat=True,
                           engine=params.launch.engine)
        out.append({"model": "seed", **measure.answers(seed, inputs, e, "seed", judged=False)})
    formats.write_json(paths.BASELINES, out)
    formats.write_json(paths.metrics("baselines"), {"dtype": engine.dtype, "models": [r["model"] for r in out],
                                                    "heldout_pairs": len(inputs.heldout),
                                                    "ifeval_prompts": len(inputs.ifeval), "judged": len(inputs.judged)})


if __name__ == "__main__":
    run(main)
