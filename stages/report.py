"""report: a self-contained HTML page of the self-curation results (reports/curation.html)."""

from humpback import paths, report
from humpback.config import load_params
from humpback.stage import run


def main():
    summary = report.build(
        paths.REPORT,
        rated_path=paths.FINAL.rated,
        threshold=load_params().curation.threshold,
        rater_check_path=paths.metrics("rater_check"),  # optional: the page says when it is absent
    )
    print(f"reports/curation.html: {summary['pairs']} pairs, {summary['kept']} kept at {summary['threshold']}")


if __name__ == "__main__":
    run(main)
