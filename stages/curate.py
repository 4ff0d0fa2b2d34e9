"""curate: keep the rated pairs at or above curation.threshold (self-curation, part 2), or as many chosen
by another rule (curation.selection: random, longest, ifd).

`python stages/curate.py round1` curates round 1's ratings (the pairs that train M1)."""

import sys

from humpback import formats, recipe
from humpback.config import load_params
from humpback.curation.select import curate, curate_metrics
from humpback.stage import run


def main():
    params = load_params()
    c, rnd = params.curation, recipe.round_arg(sys.argv)
    rated = formats.load_json(rnd.rated)
    if c.selection == "ifd":  # the base model's instruction-following difficulty of each pair
        from humpback.curation.ifd import ifd_scores

        scores = ifd_scores(rated, params.model, params.evaluate.batch_size, params.finetune.max_length)
        rated = [{**r, "ifd": s} for r, s in zip(rated, scores)]
    formats.write_json(rnd.curated, curate(rated, c.threshold, c.selection, c.seed))
    formats.write_json(rnd.curate_metrics, curate_metrics(rated, c.threshold, c.selection, c.seed))


if __name__ == "__main__":
    run(main)
