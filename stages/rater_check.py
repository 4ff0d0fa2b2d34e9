"""rater_check: fit the scoring mode on the dev part of the labelled rater set, measure it on the test part."""

from humpback import curation, formats
from humpback.config import load_params
from humpback.generation import open_engine
from humpback.stage import run


def main():
    params = load_params()
    c = params.curation
    pairs = curation.load_rater_check(c.check_pairs)
    engine = open_engine(c.rater, params.model, c.batch_size, chat=True)
    rater = curation.fit_rater(engine, pairs, c.scoring, c.max_new_tokens, c.relevance_tokens, c.probe_l2)
    rater.save("models/rater")
    items = curation.rater_check_items(pairs, "test")
    rated = rater.rate(engine, items)
    formats.write_json("data/rater_check_scored.json", rated)
    metrics = curation.rater_check_metrics(items, [r["score_expected"] for r in rated])
    formats.write_json("metrics/rater_check.json", {"rater": c.rater, "scoring": c.scoring, **metrics,
                                                     **curation.rating_metrics(items, rated)})
    engine.report("rater_check")


if __name__ == "__main__":
    run(main)
