import json

import pytest

from humpback import HumpbackError, formats


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


def test_guanaco_turns_split_on_markers():
    text = "### Human: Hi there### Assistant: Hello!### Human: How are you?### Assistant: Fine."
    assert formats.guanaco_turns(text) == [
        ("human", "Hi there"), ("assistant", "Hello!"), ("human", "How are you?"), ("assistant", "Fine."),
    ]


def test_guanaco_pairs_take_first_exchange_and_count_skips(tmp_path):
    path = write_lines(tmp_path / "g.jsonl", [
        json.dumps({"text": "### Human: Q1### Assistant: A1### Human: Q2### Assistant: A2"}),
        json.dumps({"text": "### Human: only a question"}),  # no assistant turn
        json.dumps({"text": ""}),  # empty text
        json.dumps({"prompt": "wrong field"}),  # missing field
        json.dumps({"text": "### Human: ### Assistant: A"}),  # empty instruction
        "",  # blank lines are not records
        json.dumps({"text": "### Human: Q3### Assistant: A3"}),
    ])
    report = formats.ParseReport()
    pairs = formats.parse_guanaco(formats.read_jsonl(path), report)
    assert [(p["instruction"], p["response"]) for p in pairs] == [("Q1", "A1"), ("Q3", "A3")]
    d = report.as_dict()
    assert d["read"] == 6 and d["kept"] == 2
    assert d["dropped_by_reason"] == {"missing_field": 1, "empty_text": 2, "no_assistant_turn": 1, "multi_turn": 0}
    assert d["read"] == d["kept"] + d["dropped"]


def test_lima_keeps_single_turn_and_counts_multi_turn(tmp_path):
    path = write_lines(tmp_path / "l.jsonl", [
        json.dumps({"conversations": ["Q", "A"], "source": "wikihow"}),
        json.dumps({"conversations": ["Q", "A", "Q2", "A2"], "source": "multi_turn"}),
        json.dumps({"conversations": ["Q only"]}),
        json.dumps({"conversations": ["Q", "  "]}),
        json.dumps({"source": "x"}),
        json.dumps({"conversations": ["Q", "A"]}),
    ])
    report = formats.ParseReport()
    pairs = formats.parse_lima(formats.read_jsonl(path), report)
    assert [p["source"] for p in pairs] == ["wikihow", "unknown"]
    assert report.as_dict()["dropped_by_reason"] == {
        "missing_field": 1, "empty_text": 1, "no_assistant_turn": 1, "multi_turn": 1}


def test_invalid_json_names_file_and_line(tmp_path):
    path = write_lines(tmp_path / "bad.jsonl", [json.dumps({"text": "x"}), '{"text": "unterminated'])
    with pytest.raises(HumpbackError, match=r"bad\.jsonl:2: invalid JSON"):
        list(formats.read_jsonl(path))


def test_heldout_is_disjoint_and_sample_grows_as_prefix():
    pairs = [{"id": f"lima-{i}", "response": str(i)} for i in range(50)]
    heldout, rest = formats.split_heldout(pairs, 10, seed=3)
    assert len(heldout) == 10 and len(rest) == 40
    assert not {p["id"] for p in heldout} & {p["id"] for p in rest}
    small, large = formats.sample(rest, 5, 1, "rest"), formats.sample(rest, 20, 1, "rest")
    assert large[:5] == small
    with pytest.raises(HumpbackError, match="augment.num_samples=41"):
        formats.sample(rest, 41, 1, "rest")


def test_bundled_corpus_meets_its_spec(repo_root):
    g, lima = formats.ParseReport(), formats.ParseReport()
    guanaco_recs = list(formats.read_jsonl(f"{repo_root}/data/raw/guanaco.jsonl"))
    lima_recs = list(formats.read_jsonl(f"{repo_root}/data/raw/lima.jsonl"))
    formats.parse_guanaco(guanaco_recs, g)
    pairs = formats.parse_lima(lima_recs, lima)
    assert g.read >= 300 and g.kept == g.read
    assert sum(1 for _, r in guanaco_recs if r["text"].count("### Human:") > 1) >= 20
    assert lima.read >= 250 and lima.dropped["multi_turn"] >= 20
    assert len({p["source"] for p in pairs}) >= 3
    assert len({p["instruction"] for p in pairs}) == len(pairs)
