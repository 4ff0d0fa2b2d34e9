"""rater_check: fit the scoring mode on the dev part of the constructed rater set, measure it on the test
parts of the constructed set and of the real backtranslated pairs labelled by hand."""

from humpback import formats, paths, recipe
from humpback.config import load_params
from humpback.curation.backtranslated import backtranslated_metrics, load_backtranslated
from humpback.curation.check import load_rater_check, rater_check_items, rating_metrics
from humpback.curation.rater import check_rater
from humpback.engine import open_engine
from humpback.stage import run


def main():
    params = load_params()
    c = params.curation
    ref, adapter = recipe.rater_model(params)  # curation.rater: self is the seed model M0
    engine = open_engine(ref, params.model, c.batch_size, adapter=adapter, chat=True,
                         engine=params.launch.engine)
    constructed = load_rater_check(c.check_pairs)
    rater, rated, metrics = check_rater(engine, constructed, c)
    metrics["precision_at_5"] = rating_metrics(rater_check_items(constructed, "test"), rated, 5)["precision_at_5"]
    metrics["auc_fit"] = metrics.pop("auc_offtopic")  # here the pairs that do not fit are the off-topic swaps
    real = [p for p in load_backtranslated(c.check_backtranslated) if p["split"] == "test"]
    real_rated = rater.rate(engine, [{"instruction": p["instruction"], "response": p["response"]} for p in real])
    rater.save(paths.RATER)
    formats.write_json(paths.RATER_CHECK_SCORED, rated)
    formats.write_json(paths.metrics("rater_check"), {"rater": c.rater, "scoring": c.scoring, "dtype": engine.dtype,
                                                      "constructed": metrics,
                                                      "backtranslated": backtranslated_metrics(real, real_rated)})
    engine.report("rater_check")


if __name__ == "__main__":
    run(main)
