"""The backtranslated rater check's loader and split (humpback.curation.backtranslated), and the
committed labelled files' consistency."""

import json
import os

import pytest

from humpback import HumpbackError
from humpback.curation.backtranslated import FIELDS, load_backtranslated, pair_key, split_responses

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def record(**over):
    rec = {"id": "r001-default-greedy", "response_id": "r001", "backward": "default", "decoding": "greedy",
           "instruction": "How do I descale a kettle?", "response": "Fill it with equal parts vinegar and water.",
           "rating": 4, "fits": True, "why": "fits; short but complete", "split": "dev"}
    return {**rec, **over}


def write(tmp_path, records):
    path = tmp_path / "bt.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


def test_loads_valid_records(tmp_path):
    recs = [record(), record(id="r001-default-sampled", decoding="sampled", rating=1, fits=False, why="other topic")]
    assert load_backtranslated(write(tmp_path, recs)) == recs


@pytest.mark.parametrize("over, message", [
    ({"rating": 6}, "bt.jsonl:2: rating must be an integer 1-5, got 6"),
    ({"rating": True}, "bt.jsonl:2: rating must be an integer 1-5, got True"),
    ({"rating": 4.0}, "bt.jsonl:2: rating must be an integer 1-5, got 4.0"),
    ({"fits": "yes"}, "bt.jsonl:2: fits must be true or false, got 'yes'"),
    ({"why": "  "}, "bt.jsonl:2: why must say"),
    ({"split": "train"}, "bt.jsonl:2: split must be dev or test, got 'train'"),
    ({"split": "test"}, "bt.jsonl:2: response 'r001' is in both dev and test"),
])
def test_a_bad_record_is_one_line_naming_file_and_line(tmp_path, over, message):
    with pytest.raises(HumpbackError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        load_backtranslated(write(tmp_path, [record(), record(id="x", **over)]))
    assert "\n" not in str(err.value)


def test_a_missing_field_is_named(tmp_path):
    rec = record()
    del rec["fits"], rec["why"]
    with pytest.raises(HumpbackError, match=r"bt.jsonl:1: missing field\(s\) fits, why"):
        load_backtranslated(write(tmp_path, [rec]))


def test_split_halves_responses_and_is_seeded():
    ids = [f"r{i:03d}" for i in range(1, 65)]
    split = split_responses(ids, seed=0)
    assert sorted(split) == ids and list(split.values()).count("dev") == 32
    assert split_responses(list(reversed(ids)), seed=0) == split  # the order given does not matter
    assert split_responses(ids, seed=1) != split


def test_pair_key_names_the_pair_only():
    assert pair_key("r001", "Explain tides.") == pair_key("r001", "Explain tides.")
    assert len({pair_key("r001", "Explain tides."), pair_key("r002", "Explain tides."),
                pair_key("r001", "Explain the tides.")}) == 3


def test_committed_responses_are_new():
    """The labelled set's responses are in neither the augmentation sample's pool nor the held-out set."""
    responses = [json.loads(line) for line in open(f"{ROOT}/data/rater_check/responses.jsonl", encoding="utf-8")]
    assert len(responses) >= 60 and len({r["id"] for r in responses}) == len(responses)
    lima = [json.loads(line) for line in open(f"{ROOT}/data/raw/lima.jsonl", encoding="utf-8")]
    known = {c for r in lima for c in r["conversations"]}
    assert not [r["id"] for r in responses if r["response"] in known or r["instruction"] in known]


def test_committed_set_loads_and_splits_by_response():
    """backtranslated.jsonl is what `merge` makes of the candidates and the labels: every candidate
    labelled, each response's instructions in one part, half of the responses in each part."""
    pairs = load_backtranslated(f"{ROOT}/data/rater_check/backtranslated.jsonl")
    candidates = [json.loads(line) for line in open(f"{ROOT}/data/rater_check/backtranslated_candidates.jsonl")]
    labels = {json.loads(line)["key"] for line in open(f"{ROOT}/data/rater_check/backtranslated_labels.jsonl")}
    assert len(pairs) == len(candidates) and {p["key"] for p in pairs} == labels
    assert all(p["key"] == pair_key(p["response_id"], p["instruction"]) for p in pairs)
    assert set(FIELDS) <= set(pairs[0])
    split = split_responses(sorted({p["response_id"] for p in pairs}))
    assert all(p["split"] == split[p["response_id"]] for p in pairs)


def test_metrics_on_a_known_case():
    from humpback.curation.check import backtranslated_metrics

    pairs = [record(rating=r, fits=f) for r, f in [(5, True), (4, True), (2, False), (1, False)]]
    rated = [{"score": s, "score_expected": e} for s, e in [(5, 4.6), (3, 3.2), (4, 3.9), (None, None)]]
    m = backtranslated_metrics(pairs, rated)
    assert m["pairs"] == 4 and m["fit"] == 2
    assert m["kept_at_4"] == 2 and m["precision_at_4"] == 0.5 and m["recall_at_4"] == 0.5  # kept: the 5 and the 2
    assert m["kept_at_5"] == 1 and m["precision_at_5"] == 1.0
    assert m["auc_fit"] == 0.75  # fits: 4.6, 3.2 vs not: 3.9, 1.0 (unscored counts as 1) -> 3 of 4 orderings
    assert m["fit_precision_at_4"] == 0.5
    none_kept = backtranslated_metrics(pairs, [{"score": 1, "score_expected": 1.0}] * 4)
    assert none_kept["precision_at_4"] is None and none_kept["spearman"] == 0.0
