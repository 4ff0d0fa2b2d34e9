"""rater_check: fit the scoring mode on the dev parts of the constructed rater set and of the real
backtranslated pairs labelled by hand, and measure it on both test parts."""

from humpback import formats, paths, recipe
from humpback.config import load_params
from humpback.curation.backtranslated import load_backtranslated
from humpback.curation.check import load_rater_check
from humpback.curation.rater import check_rater
from humpback.engine import open_engine
from humpback.stage import run


def main():
    params = load_params()
    c = params.curation
    ref, adapter = recipe.rater_model(params)  # curation.rater: self is the seed model M0
    engine = open_engine(ref, params.model, c.batch_size, adapter=adapter, chat=True,
                         engine=params.launch.engine)
    constructed, real = load_rater_check(c.check_pairs), load_backtranslated(c.check_backtranslated)
    rater, rated, metrics = check_rater(engine, constructed, real, c)
    rater.save(paths.RATER)
    formats.write_json(paths.RATER_CHECK_SCORED, rated)
    formats.write_json(paths.metrics("rater_check"), {"rater": c.rater, "scoring": c.scoring, "dtype": engine.dtype,
                                                      **metrics})
    engine.report("rater_check")


if __name__ == "__main__":
    run(main)
