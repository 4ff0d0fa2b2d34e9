"""rerate: under curation.iterations: 2, the round-1 model M1 rates the pairs again (the paper's second
iteration of self-curation): its scoring is fit and checked on the rater check as M0's was. With
iterations: 1, round 1's ratings are the final ones."""

import shutil

from humpback import formats, paths
from humpback.config import load_params
from humpback.curation.backtranslated import load_backtranslated
from humpback.curation.check import load_rater_check
from humpback.curation.rater import check_rater
from humpback.curation.select import rate_metrics
from humpback.dist import is_main_process
from humpback.engine import open_engine
from humpback.stage import run


def main():
    params = load_params()
    c = params.curation
    round1, final = paths.ROUNDS["round1"], paths.ROUNDS["final"]
    if c.iterations == 1:
        if not is_main_process():
            return
        shutil.copyfile(round1.rated, final.rated)
        formats.write_json(paths.metrics("rerate"), {"iterations": 1, **rate_metrics(formats.load_json(final.rated))})
        return
    engine = open_engine(params.model.base, params.model, c.batch_size, adapter=round1.model, chat=True,
                         engine=params.launch.engine)
    rater, _, check = check_rater(engine, load_rater_check(c.check_pairs),
                                load_backtranslated(c.check_backtranslated), c)
    rated = rater.rate(engine, formats.load_json(paths.FILTERED))
    if not is_main_process():  # under `accelerate launch`: the main process writes the outs
        return
    formats.write_json(final.rated, rated)
    formats.write_json(paths.metrics("rerate"), {"iterations": 2, "dtype": engine.dtype, **rate_metrics(rated),
                                               "rater_check": check})
    engine.report("rerate")


if __name__ == "__main__":
    run(main)
