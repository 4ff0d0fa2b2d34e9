"""curate: keep the rated pairs at or above curation.threshold (self-curation, part 2)."""

from humpback import curation, formats
from humpback.config import load_params
from humpback.stage import run


def main():
    c = load_params().curation
    rated = formats.load_json("data/curated_dataset_all_evaluated.json")
    formats.write_json("data/curated_dataset.json", curation.curate(rated, c.threshold, c.selection, c.seed))
    formats.write_json("metrics/curate.json", curation.curate_metrics(rated, c.threshold, c.selection, c.seed))


if __name__ == "__main__":
    run(main)
