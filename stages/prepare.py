"""prepare: parse the seed corpus (Guanaco format) and the unlabelled corpus (LIMA format)."""

import os

from humpback import formats, paths
from humpback.config import load_params
from humpback.stage import run


def main():
    p = load_params().data
    token = os.environ.get("HF_TOKEN")  # GAIR/lima is gated
    if p.source == "hub":
        guanaco_records = formats.hub_records(p.guanaco_hub, "data.guanaco_hub")
        lima_records = formats.hub_records(p.lima_hub, "data.lima_hub", token=token)
    else:
        guanaco_records, lima_records = formats.read_jsonl(p.guanaco_path), formats.read_jsonl(p.lima_path)

    guanaco_report, lima_report = formats.ParseReport(), formats.ParseReport()
    seed_pairs = formats.parse_guanaco(guanaco_records, guanaco_report)
    lima_pairs = formats.parse_lima(lima_records, lima_report)
    heldout, unlabelled = formats.split_heldout(lima_pairs, p.heldout_size, p.seed)

    formats.write_json(paths.SEED_PAIRS, seed_pairs)
    formats.write_json(paths.UNLABELLED, unlabelled)
    formats.write_json(paths.HELDOUT, heldout)
    formats.write_json(paths.metrics("prepare"), {
        "guanaco": guanaco_report.as_dict(),
        "lima": {**lima_report.as_dict(), "heldout": len(heldout), "unlabelled": len(unlabelled)},
    })
    print(f"prepare: {len(seed_pairs)} seed pairs, {len(unlabelled)} unlabelled + {len(heldout)} held-out LIMA pairs")


if __name__ == "__main__":
    run(main)
