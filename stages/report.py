"""report: a self-contained HTML page of the self-curation results (reports/curation.html)."""

from humpback.config import load_params
from humpback.results import report
from humpback.stage import run


def main():
    c = load_params().curation
    summary = report.build(
        "reports/curation.html",
        rated_path="data/curated_dataset_all_evaluated.json",
        threshold=c.threshold,
        rater_check_path="metrics/rater_check.json",  # optional: the page says when it is absent
        selection=c.selection,  # the page marks the pairs that `curate` keeps, by its own rule
        seed=c.seed,
    )
    print(f"reports/curation.html: {summary['pairs']} pairs, {summary['kept']} kept at {summary['threshold']}")


if __name__ == "__main__":
    run(main)
