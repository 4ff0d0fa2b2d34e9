"""Scoring modes on a tiny random model, and the rater-check metrics, on the shipped labelled set."""

import json
import os

import pytest
import torch

from humpback import HumpbackError
from humpback.curation.backtranslated import load_backtranslated
from humpback.curation.check import load_rater_check, rater_check_items, rater_check_metrics, rating_metrics
from humpback.curation.probe import expected, fit_cuts, fit_head, head_probs, rating
from humpback.curation.rater import Rater, SCORINGS, fit_rater, rater_features
from humpback.engine import Engine

PAIRS = "data/rater_check/pairs.jsonl"
BACKTRANSLATED = "data/rater_check/backtranslated.jsonl"


@pytest.fixture(scope="module")
def check_pairs(repo_root):
    return load_rater_check(os.path.join(repo_root, PAIRS))


@pytest.fixture(scope="module")
def real_pairs(repo_root):
    """The pairs of six backtranslated responses of each part (short instructions and responses kept)."""
    pairs = load_backtranslated(os.path.join(repo_root, BACKTRANSLATED))
    keep = set()
    for part in ("dev", "test"):
        keep |= set(sorted({p["response_id"] for p in pairs if p["split"] == part})[:6])
    return [{**p, "response": p["response"][:400]} for p in pairs if p["response_id"] in keep]


@pytest.fixture(scope="module")
def engine(tiny_model, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    return Engine(model, tiny_tokenizer, "tiny", 8, add_special_tokens=not tiny_tokenizer.chat_template)


def small(pairs, per_part=4):
    """The first `per_part` instructions of each part, all their levels."""
    keep = set()
    for part in ("dev", "test"):
        ids = sorted({p["instruction_id"] for p in pairs if p["split"] == part})[:per_part]
        keep |= set(ids)
    return [p for p in pairs if p["instruction_id"] in keep]


def test_the_shipped_set_is_balanced_and_split_by_instruction(check_pairs):
    assert len(check_pairs) >= 150
    by_instruction = {}
    for p in check_pairs:
        by_instruction.setdefault(p["instruction_id"], []).append(p)
    assert len(by_instruction) >= 30
    for group in by_instruction.values():
        assert sorted(p["level"] for p in group) == [1, 2, 3, 4, 5]
        assert len({p["split"] for p in group}) == 1  # an instruction never straddles dev and test
    words = {lv: [len(p["response"].split()) for p in check_pairs if p["level"] == lv] for lv in range(1, 6)}
    means = [sum(w) / len(w) for w in words.values()]
    assert max(means) / min(means) < 1.15  # length does not give the level away


@pytest.mark.parametrize("scoring", SCORINGS)
def test_every_scoring_gives_a_rubric_rating(engine, check_pairs, real_pairs, scoring, tmp_path):
    pairs = small(check_pairs)
    rater = fit_rater(engine, pairs, scoring, max_new_tokens=6, relevance_tokens=16, l2=1.0, backtranslated=real_pairs)
    rater.save(str(tmp_path / "rater"))
    loaded = Rater.load(str(tmp_path / "rater"))
    items = rater_check_items(pairs, "test")
    rated = loaded.rate(engine, items)
    assert len(rated) == len(items) == 4 * 5 + 4
    for r in rated:
        if scoring == "generate":
            assert r["score"] is None or r["score"] in (1, 2, 3, 4, 5)
            continue
        assert r["score"] in (1, 2, 3, 4, 5) and isinstance(r["score"], int)
        assert 1 <= r["score_expected"] <= 5
        assert len(r["probabilities"]) == 5 and sum(r["probabilities"]) == pytest.approx(1, abs=0.01)
    if scoring != "generate":  # the rating is the cut points' on the expected score: monotone in it
        assert loaded.tensors["cuts"].shape == (4,) and loaded.fit["backtranslated_dev_pairs"] > 0
        by_expected = sorted(rated, key=lambda r: r["score_expected"])
        assert all(a["score"] <= b["score"] for a, b in zip(by_expected, by_expected[1:])
                   if a["score_expected"] < b["score_expected"])
    if scoring == "probe":
        assert all("relevance" in r for r in rated)
        assert {"mean", "std", "weight", "bias", "gate_scale", "gate_bias"} <= set(loaded.tensors)
        # what was saved rates exactly as what was fit (rounded weights: to 0.01)
        direct = rater.rate(engine, items)
        assert [r["score_expected"] for r in direct] == pytest.approx([r["score_expected"] for r in rated], abs=0.02)
    metrics = rater_check_metrics(items, [r["score_expected"] for r in rated])
    assert {"spearman", "auc_high_vs_low", "auc_offtopic", "mean_by_level"} <= set(metrics)
    assert set(metrics["mean_by_level"]) == {"1", "2", "3", "4", "5"}


def test_the_probe_learns_levels_it_is_shown(engine, check_pairs):
    """On its own training pairs, a linear head on the rater's state must rank levels: a head that
    ignores its input would not (this fails if features and labels are misaligned)."""
    pairs = small(check_pairs, per_part=6)
    items = rater_check_items(pairs, "dev")
    feats = rater_features(engine, items, 16)
    head = fit_head(items, feats, l2=0.01)
    fitted = rater_check_metrics(items, expected(head_probs(head, feats)).tolist())
    assert fitted["spearman"] > 0.8
    shuffled = fit_head(items, feats[1:] + feats[:1], l2=0.01)  # labels no longer match
    assert head_probs(shuffled, feats).argmax(-1).tolist() != head_probs(head, feats).argmax(-1).tolist()


def test_cut_points_rate_as_many_pairs_at_each_level_as_are_labelled_there():
    scores = [4.1, 3.9, 3.2, 3.0, 2.5, 2.4, 1.9, 1.2]
    levels = [5, 2, 4, 4, 3, 1, 1, 1]  # three at 4 or more, wherever they lie
    cuts = fit_cuts(scores, levels)
    rated = 1 + (torch.tensor(scores)[:, None] >= cuts).sum(-1)
    for level in (2, 3, 4, 5):
        assert int((rated >= level).sum()) == sum(lv >= level for lv in levels)
    assert cuts.tolist() == pytest.approx([(2.5 + 2.4) / 2, (3.0 + 2.5) / 2, (3.2 + 3.0) / 2, (4.1 + 3.9) / 2])
    assert float(fit_cuts(scores, [1] * 8)[3]) > max(scores)  # no pair at 5: nothing rates 5
    # a rating from a distribution: by the cuts where the rater has them, else its most likely level
    probs = torch.tensor([[0.0, 0.0, 0.6, 0.0, 0.4], [0.5, 0.5, 0.0, 0.0, 0.0]])  # expected 3.8 and 1.5
    assert rating({"cuts": torch.tensor([1.4, 2.0, 3.5, 3.9])}, probs) == [4, 2]
    assert rating({}, probs) == [3, 1]


def test_metrics_on_known_scores():
    items = [{"level": lv, "offtopic": False} for lv in (1, 2, 3, 4, 5)] + [{"level": 5, "offtopic": True}]
    perfect = rater_check_metrics(items, [1, 2, 3, 4, 5, 1])
    assert perfect["spearman"] == 1.0 and perfect["auc_high_vs_low"] == 1.0 and perfect["auc_offtopic"] == 1.0
    inverted = rater_check_metrics(items, [5, 4, 3, 2, 1, 5])
    assert inverted["spearman"] == -1.0 and inverted["auc_high_vs_low"] == 0.0 and inverted["auc_offtopic"] == 0.0
    flat = rater_check_metrics(items, [3] * 6)
    assert flat["auc_high_vs_low"] == 0.5 and flat["mean_by_level"]["1"] == 3
    rm = rating_metrics(items, [{"score": s} for s in (1, 2, 4, 4, 5, 5)])
    assert rm["precision_at_4"] == pytest.approx(2 / 4, abs=1e-3) and rm["recall_at_4"] == 1.0


def test_a_bad_labelled_record_is_one_clear_error(tmp_path):
    path = tmp_path / "pairs.jsonl"
    good = {"id": "x-1", "instruction_id": "x", "instruction": "Q?", "response": "A.", "level": 1, "split": "dev"}
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "level": 7}) + "\n")
    with pytest.raises(HumpbackError, match=r"pairs.jsonl:2: level must be 1-5"):
        load_rater_check(str(path))
