"""curate: keep the rated pairs at or above curation.threshold (self-curation, part 2).

`python stages/curate.py round1` curates round 1's ratings (the pairs that train M1)."""

import sys

from humpback import formats, recipe
from humpback.config import load_params
from humpback.curation.select import curate, curate_metrics
from humpback.stage import run


def main():
    c, rnd = load_params().curation, recipe.round_arg(sys.argv)
    rated = formats.load_json(rnd.rated)
    formats.write_json(rnd.curated, curate(rated, c.threshold, c.selection, c.seed))
    formats.write_json(rnd.curate_metrics, curate_metrics(rated, c.threshold, c.selection, c.seed))


if __name__ == "__main__":
    run(main)
