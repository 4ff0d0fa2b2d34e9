"""rate: the rater model scores every self-augmented pair from 1 to 5 (self-curation, part 1)."""

from humpback import curation, formats
from humpback.config import load_params
from humpback.generation import open_engine
from humpback.stage import run


def main():
    params = load_params()
    c = params.curation
    pairs = formats.load_json("data/self_augmented.json")
    rater = curation.Rater.load("models/rater")  # as fit and measured by rater_check
    engine = open_engine(c.rater, params.model, c.batch_size, chat=True)
    rated = rater.rate(engine, pairs)
    formats.write_json("data/curated_dataset_all_evaluated.json", rated)
    formats.write_json("metrics/rate.json", curation.rate_metrics(rated))
    formats.write_json("plots/score_histogram.json", curation.score_histogram(rated))
    engine.report("rate")


if __name__ == "__main__":
    run(main)
