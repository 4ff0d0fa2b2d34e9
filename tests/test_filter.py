"""The filters on generated instructions (humpback.filters) and the filter stage."""

import dataclasses
import json
import os
import random
import subprocess
import sys

import pytest

from humpback import HumpbackError
from humpback.config import FilterParams
from humpback.filters import REASONS, drop_reasons, filter_instructions, jaccard, ngrams, words

RESPONSE = "Sure, here is an answer that starts nothing like any of the instructions below."


def recs(*instructions, response=RESPONSE):
    return [{"id": f"r{i}", "instruction": s, "response": response} for i, s in enumerate(instructions)]


def params(**kw):
    return dataclasses.replace(FilterParams(), **kw)


def reasons(*instructions, **kw):
    return drop_reasons(recs(*instructions), params(**kw))


def test_words_normalise_case_whitespace_and_punctuation():
    assert words("  What's the  BEST\tway,\nreally?! ") == ["whats", "the", "best", "way", "really"]
    assert words("bounce-based -- ? …") == ["bouncebased"]
    assert words("") == [] and words(" ?! ") == []


def test_empty_and_length_rules():
    got = reasons("", "   ", "?!", "Two words.", "Three words here.", "one two three four five six",
                  min_words=3, max_words=5)
    assert got == ["empty", "empty", "empty", "too_short", None, "too_long"]
    # a missing or null instruction is empty too, not an error
    assert drop_reasons([{"id": "x"}, {"instruction": None, "response": None}], params()) == ["empty", "empty"]


def test_max_words_zero_is_no_limit_and_bounds_are_inclusive():
    long = " ".join(f"w{i}" for i in range(500))
    assert reasons(long, max_words=0) == [None]
    assert reasons("a b c", "a b c d e", min_words=3, max_words=5) == [None, None]


def test_bad_params_and_bad_records_are_one_line_errors():
    for kw in ({"min_words": -1}, {"min_words": 5, "max_words": 4}, {"ngram": 0}, {"near_duplicate": 1.5}):
        with pytest.raises(HumpbackError):
            reasons("a fine instruction here", **kw)
    with pytest.raises(HumpbackError, match="instruction is a int"):
        drop_reasons([{"id": "x", "instruction": 3}], params())


def test_copies_response():
    p = params(copy_words=4, min_words=1)
    response = "The northern lights happen when charged particles from the Sun hit the air."
    rows = [
        "The northern lights happen when the Sun is active?",  # first 4 words = response's first 4
        "the NORTHERN lights, happen",  # all 4 words, after normalisation
        "The northern lights",  # shorter than copy_words: all of it is the response's opening
        "The northern aurora happen when?",  # differs within the first 4 words
        "What are the northern lights happen when",  # the response's words, but not at the start
        "northern lights",  # a prefix of the response only from its 2nd word: kept
    ]
    got = drop_reasons([{"instruction": s, "response": response} for s in rows], p)
    assert got == ["copies_response"] * 3 + [None] * 3
    # copy_words: 0 turns the rule off; an empty response copies nothing
    assert drop_reasons([{"instruction": rows[0], "response": response}], params(copy_words=0)) == [None]
    assert drop_reasons([{"instruction": rows[0], "response": ""}], p) == [None]


def test_exact_duplicates_keep_the_first_occurrence():
    records = recs("How do I bake bread?", "Tell me a joke please.", "how do i   BAKE bread", "How do I bake bread!!")
    kept, m = filter_instructions(records, params())
    assert [r["id"] for r in kept] == ["r0", "r1"]
    assert kept[0] is records[0] and kept[1] is records[1]  # unchanged objects, in order
    assert m["dropped"]["exact_duplicate"] == 2 and m["kept"] == 2


def test_duplicates_compare_only_with_kept_instructions():
    # the first is dropped for copying its response, so the second (another response) is the first kept one
    records = [{"id": "a", "instruction": "Explain how tides work", "response": "Explain how tides work: the Moon"},
               {"id": "b", "instruction": "Explain how tides work", "response": "The Moon pulls the oceans."},
               {"id": "c", "instruction": "explain how tides work?", "response": "Gravity."}]
    assert drop_reasons(records, params(copy_words=4)) == ["copies_response", None, "exact_duplicate"]


def test_near_duplicate_threshold_boundary():
    # 3-grams: a has 4 (w1..w6); b adds w7, so 4 shared of 5: Jaccard 0.8 exactly
    a, b = "w1 w2 w3 w4 w5 w6", "w1 w2 w3 w4 w5 w6 w7"
    assert jaccard(ngrams(words(a), 3), ngrams(words(b), 3)) == 0.8
    assert reasons(a, b, near_duplicate=0.8, ngram=3) == [None, "near_duplicate"]  # >= drops
    assert reasons(a, b, near_duplicate=0.81, ngram=3) == [None, None]
    assert reasons(a, b, near_duplicate=0, ngram=3) == [None, None]  # 0: off
    # the similarity is symmetric, and compared with every kept instruction, not only the last
    assert reasons(b, "x y z q r", a, near_duplicate=0.8, ngram=3) == [None, None, "near_duplicate"]


def test_near_duplicate_short_instructions_are_one_ngram():
    # shorter than ngram: the whole word tuple is the one n-gram, so only the same words match (Jaccard 1),
    # and those are exact duplicates, caught first
    assert ngrams(["a", "b"], 3) == frozenset([("a", "b")])
    assert reasons("Define entropy now", "Define entropy", "define entropy!", min_words=1, near_duplicate=0.5) == [
        None, None, "exact_duplicate"]


def test_near_duplicate_on_template_instructions_at_defaults():
    # real pairs from data/self_augmented.json: a shared template is not a duplicate at the default 0.7 ...
    assert reasons("What's the best way to care for a kitten?", "1. What's the best way to care for a dog?") == [
        None, None]
    # ... but the same question with words added at the end is
    assert reasons("What's the best way to clean a room?", "What's the best way to clean a room quickly?") == [
        None, "near_duplicate"]


def test_rules_apply_in_order_one_reason_each():
    six, seven = "w1 w2 w3 w4 w5 w6", "w1 w2 w3 w4 w5 w6 w7"  # 3-gram Jaccard 0.8
    # too short (rule 2) and a near duplicate of a kept one (rule 6): too_short
    assert reasons(seven, six, min_words=7, near_duplicate=0.5) == [None, "too_short"]
    # too long (rule 3) and a near duplicate (rule 6): too_long
    assert reasons(six, seven, max_words=6, near_duplicate=0.5) == [None, "too_long"]
    # copies its response (rule 4) and an exact duplicate (rule 5): copies_response
    records = [{"instruction": "Define the word entropy", "response": "Entropy is disorder."},
               {"instruction": "Define the word entropy", "response": "Define the word entropy, please."}]
    assert drop_reasons(records, params(copy_words=3)) == [None, "copies_response"]
    # an exact duplicate (rule 5) is also Jaccard 1 (rule 6): exact_duplicate
    assert reasons(six, six, near_duplicate=0.5) == [None, "exact_duplicate"]
    # a too-short instruction is never kept, so its repeat is too short again, not a duplicate
    assert reasons("Hi there", "Hi there", min_words=3) == ["too_short", "too_short"]
    assert REASONS == ("empty", "too_short", "too_long", "copies_response", "exact_duplicate", "near_duplicate")


def test_disabled_keeps_everything_with_the_same_keys():
    records = recs("", "a", "a", "same one here", "same one here")
    kept, m = filter_instructions(records, params(enabled=False))
    assert kept == records
    assert m == {"generated": 5, "kept": 5, "dropped": {r: 0 for r in REASONS}}
    _, on = filter_instructions(records, params())
    assert set(on["dropped"]) == set(m["dropped"]) and on["kept"] == 1


def test_counts_add_up_on_random_records():
    rng = random.Random(0)
    vocab = ["how", "do", "I", "What's", "the", "best", "way", "to", "cook", "rice", "?", "!", "A", "a", "."]
    for trial in range(300):
        n = rng.randrange(0, 40)
        records = []
        for i in range(n):
            instr = " ".join(rng.choice(vocab) for _ in range(rng.randrange(0, 12)))
            resp = instr if rng.random() < 0.1 else " ".join(rng.choice(vocab) for _ in range(rng.randrange(0, 20)))
            records.append({"id": str(i), "instruction": instr, "response": resp})
        p = params(min_words=rng.randrange(0, 4), max_words=rng.choice([0, 6, 9]), ngram=rng.randrange(1, 4),
                   near_duplicate=rng.choice([0, 0.3, 0.7, 1.0]), copy_words=rng.randrange(0, 5),
                   enabled=rng.random() < 0.9)
        if p.max_words and p.max_words < p.min_words:
            continue
        kept, m = filter_instructions(records, p)
        why = drop_reasons(records, p)
        assert m["generated"] == n and m["kept"] == len(kept) == why.count(None)
        assert m["kept"] + sum(m["dropped"].values()) == n
        assert set(m["dropped"]) == set(REASONS) and all(w is None or w in REASONS for w in why)
        assert kept == [r for r, w in zip(records, why) if w is None]
        # the kept instructions hold no exact duplicates
        kept_words = [tuple(words(r["instruction"])) for r in kept]
        assert not p.enabled or len(set(kept_words)) == len(kept_words)
        # near duplicates, by brute force: no two kept ones at the threshold, each dropped one near a kept earlier one
        if p.enabled and p.near_duplicate:
            grams = [ngrams(words(r["instruction"]), p.ngram) for r in records]
            kept_idx = [i for i, w in enumerate(why) if w is None]
            assert all(jaccard(grams[i], grams[j]) < p.near_duplicate for i in kept_idx for j in kept_idx if i < j)
            for i, w in enumerate(why):
                if w == "near_duplicate":
                    assert any(jaccard(grams[i], grams[j]) >= p.near_duplicate for j in kept_idx if j < i)


def test_stage_writes_the_filtered_records_and_metrics(repo_root, tmp_path):
    (tmp_path / "params.yaml").write_text("filter:\n  min_words: 3\n  max_words: 8\n  copy_words: 4\n")
    (tmp_path / "data").mkdir()
    records = [
        {"id": "a", "instruction": "What is the Doppler effect?", "response": "A change in pitch."},
        {"id": "b", "instruction": "what is the doppler effect", "response": "Frequency shift."},
        {"id": "c", "instruction": "Why?", "response": "Because."},
        {"id": "d", "instruction": "one two three four five six seven eight nine", "response": "x"},
        {"id": "e", "instruction": "I totally get this, I was", "response": "I totally get this, I was tired."},
        {"id": "f", "instruction": "How do tides work today?", "response": "The Moon."},
    ]
    (tmp_path / "data" / "self_augmented.json").write_text(json.dumps(records))
    env = {**os.environ, "PYTHONPATH": repo_root, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, os.path.join(repo_root, "stages", "filter.py")]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    kept = json.loads((tmp_path / "data" / "self_augmented_filtered.json").read_text())
    m = json.loads((tmp_path / "metrics" / "filter.json").read_text())
    assert kept == [records[0], records[5]]
    assert m == {"generated": 6, "kept": 2, "dropped": {"empty": 0, "too_short": 1, "too_long": 1,
                                                         "copies_response": 1, "exact_duplicate": 1,
                                                         "near_duplicate": 0}}
    assert m["kept"] + sum(m["dropped"].values()) == m["generated"]

    # a bad param is one line on stderr, no traceback
    (tmp_path / "params.yaml").write_text("filter:\n  ngram: 0\n")
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stderr.splitlines() == ["error: filter: ngram must be >= 1, not 0"]
