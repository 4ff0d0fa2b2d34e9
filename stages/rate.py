"""rate: the rater scores every filtered self-augmented pair from 1 to 5 (self-curation, part 1; round 1)."""

from humpback import formats, paths, recipe
from humpback.config import load_params
from humpback.curation.rater import Rater
from humpback.curation.select import rate_metrics, score_histogram
from humpback.dist import is_main_process
from humpback.engine import open_engine
from humpback.stage import run


def main():
    params = load_params()
    c = params.curation
    pairs = formats.load_json(paths.FILTERED)
    rater = Rater.load(paths.RATER)  # as fit and measured by rater_check
    ref, adapter = recipe.rater_model(params)
    engine = open_engine(ref, params.model, c.batch_size, adapter=adapter, chat=True,
                         engine=params.launch.engine)
    rated = rater.rate(engine, pairs)
    if not is_main_process():  # under `accelerate launch`: the main process writes the outs
        return
    formats.write_json(paths.ROUNDS["round1"].rated, rated)
    formats.write_json(paths.metrics("rate"), {"dtype": engine.dtype, **rate_metrics(rated)})
    formats.write_json(paths.SCORE_HISTOGRAM, score_histogram(rated))
    engine.report("rate")


if __name__ == "__main__":
    run(main)
