"""report: a self-contained HTML page of the self-curation results (reports/curation.html)."""

from humpback import report
from humpback.config import load_params
from humpback.stage import run


def main():
    summary = report.build(
        "reports/curation.html",
        rated_path="data/curated_dataset_all_evaluated.json",
        threshold=load_params().curation.threshold,
        rater_check_path="metrics/rater_check.json",  # optional: the page says when it is absent
    )
    print(f"reports/curation.html: {summary['pairs']} pairs, {summary['kept']} kept at {summary['threshold']}")


if __name__ == "__main__":
    run(main)
