"""filter: drop junk generated instructions (duplicates, length, copies of the response) before rating."""

from humpback import filters, formats
from humpback.config import load_params
from humpback.stage import run


def main():
    p = load_params().filter
    records = formats.load_json("data/self_augmented.json")
    kept, metrics = filters.filter_instructions(records, p)
    formats.write_json("data/self_augmented_filtered.json", kept)
    formats.write_json("metrics/filter.json", metrics)


if __name__ == "__main__":
    run(main)
