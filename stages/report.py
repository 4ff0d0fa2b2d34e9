"""report: a self-contained HTML page of the self-curation results (reports/curation.html)."""

from humpback import paths
from humpback.config import load_params
from humpback.results import report
from humpback.stage import run


def main():
    c = load_params().curation
    summary = report.build(
        paths.REPORT,
        rated_path=paths.FINAL.rated,
        threshold=c.threshold,
        rater_check_path=paths.metrics("rater_check"),  # optional: the page says when it is absent
        selection=c.selection,  # the page marks the pairs that `curate` keeps, by its own rule
        seed=c.seed,
        curated_path=paths.FINAL.curated,  # selection: ifd (the IFD values are there)
    )
    print(f"{paths.REPORT}: {summary['pairs']} pairs, {summary['kept']} kept at {summary['threshold']}")


if __name__ == "__main__":
    run(main)
