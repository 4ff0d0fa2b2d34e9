"""filter: drop junk generated instructions (duplicates, length, copies of the response) before rating."""

from humpback import filters, formats, paths
from humpback.config import load_params
from humpback.stage import run


def main():
    p = load_params().filter
    records = formats.load_json(paths.AUGMENTED)
    kept, metrics = filters.filter_instructions(records, p)
    formats.write_json(paths.FILTERED, kept)
    formats.write_json(paths.metrics("filter"), metrics)


if __name__ == "__main__":
    run(main)
