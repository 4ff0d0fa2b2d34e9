"""The evaluation's parts: each verifiable-instruction checker on strings that pass and that fail, the
IFEval loader's errors, the bootstrap on cases whose answer is known, and the derangement."""

import json
import os

import numpy as np
import pytest

from humpback import HumpbackError
from humpback.evaluation import constraints as c
from humpback.evaluation import ifeval, nll
from humpback.evaluation.bootstrap import interval

# (type, kwargs, passing responses, failing responses)
CASES = [
    ("words_at_most", {"n": 5}, ["One two three four five.", "It's fine."], ["one two three four five six", ""]),
    ("words_at_least", {"n": 4}, ["a b c d", "Four words are here."], ["only three words", ""]),
    ("sentences_at_most", {"n": 2}, ["One. Two!", "Just one sentence"], ["One. Two. Three.", "   "]),
    ("bullet_list", {"n": 2}, ["* a\n* b", "Intro:\n- first\n- second"], ["* a\n* b\n* c", "a, b", "**bold** x\n* a"]),
    ("numbered_list", {"n": 3}, ["1. a\n2. b\n3. c", "1) x\n2) y\n3) z"], ["1. a\n2. b", "1. a 2. b 3. c"]),
    ("lowercase", {}, ["all small here.", "ok 1 2 3"], ["Not all small.", "123", ""]),
    ("uppercase", {}, ["ALL CAPS, 2 TIMES!", "YES"], ["ALL CAPS but one", "42"]),
    ("include_keywords", {"keywords": ["river", "green"]}, ["A green River.", "river... GREEN"],
     ["a green riverbank", "only river"]),
    ("exclude_keywords", {"keywords": ["very"]}, ["Everything is fine.", "Every day."], ["Very nice.", "so very", ""]),
    ("keyword_frequency", {"keyword": "home", "n": 2}, ["Home, sweet home.", "home home home"],
     ["home is where homes are", "no"]),
    ("start_with", {"phrase": "Sure"}, ["Sure, here it is.", "  sure thing"], ["Of course. Sure.", ""]),
    ("end_with", {"phrase": "The end."}, ["A story. The end.", "the end.  \n"], ["The end. Really.", "The end"]),
    ("json_format", {}, ['{"a": 1}', '```json\n[1, 2]\n```', '"text"'], ["{'a': 1}", "Here: {\"a\": 1}", ""]),
    ("title", {}, ["<<A Title>>\nText", "Text <<x>>"], ["<A Title>", "<<>>", "<< >>", "<<a\nb>>"]),
    ("no_comma", {}, ["No commas here.", "Yes; and no."], ["One, two.", ""]),
    ("placeholders", {"n": 2}, ["Dear [name], at [place].", "[a][b]"], ["Dear [name].", "[ ] and []"]),
    ("postscript", {"marker": "P.S."}, ["Hello.\nP.S. Bye.", "Hello. p.s. later"], ["P.S. only", "Hello PS bye"]),
    ("repeat_request", {"request": "Describe the sea."}, ["Describe the sea. It is blue.", "describe the sea.\nWet."],
     ["Describe the sea.", "The sea is blue. Describe the sea."]),
    ("quotation", {}, ['"A quoted answer."', '  "x y"  '], ['"Unclosed', 'No quotes', '""']),
    ("highlights", {"n": 2}, ["*one* and *two*", "A *b* c *d e*"], ["*one* only", "**bold** and **more**"]),
]


def test_every_checker_has_cases():
    assert {case[0] for case in CASES} == set(c.CHECKERS)


@pytest.mark.parametrize("iid,kwargs,good,bad", CASES, ids=[case[0] for case in CASES])
def test_checker(iid, kwargs, good, bad):
    for text in good:
        assert c.check(text, iid, kwargs), f"{iid} should pass {text!r}"
    for text in bad:
        assert not c.check(text, iid, kwargs), f"{iid} should fail {text!r}"


def test_the_committed_set():
    records = ifeval.load_prompts("data/eval/ifeval.jsonl")
    assert len(records) >= 200
    types = {i for r in records for i in r["instruction_id_list"]}
    assert len(types) >= 15
    assert len({r["key"] for r in records}) == len(records)
    assert all(1 <= len(r["instruction_id_list"]) <= 2 for r in records)


@pytest.mark.parametrize("record,message", [
    ({"key": 1, "prompt": "x"}, "needs the fields"),
    ({"key": 1, "prompt": "x", "instruction_id_list": ["nope"], "kwargs": [{}]}, "unknown instruction id 'nope'"),
    ({"key": 1, "prompt": "x", "instruction_id_list": ["title"], "kwargs": []}, "same length"),
    ({"key": 1, "prompt": "x", "instruction_id_list": ["words_at_most"], "kwargs": [{"m": 3}]}, "do not fit"),
    ({"key": 1, "prompt": " ", "instruction_id_list": ["title"], "kwargs": [{}]}, "non-empty text"),
])
def test_loader_names_file_and_line(tmp_path, record, message):
    path = tmp_path / "set.jsonl"
    good = {"key": 0, "prompt": "Say hi.", "instruction_id_list": ["no_comma"], "kwargs": [{}]}
    path.write_text(json.dumps(good) + "\n" + json.dumps(record) + "\n")
    with pytest.raises(HumpbackError, match=rf"^{path}:2: .*{message}"):
        ifeval.load_prompts(str(path))


def test_accuracy_counts():
    records = [{"instruction_id_list": ["a", "b"]}, {"instruction_id_list": ["a"]}]
    acc = ifeval.accuracy(records, [[True, False], [True]], 1000, 0)
    assert acc["prompt_level_accuracy"] == 0.5
    assert acc["instruction_level_accuracy"] == round(2 / 3, 4)
    assert acc["by_type"]["a"]["accuracy"] == 1.0 and acc["by_type"]["b"]["accuracy"] == 0.0


def test_bootstrap_known_answers():
    a = np.random.default_rng(1).normal(size=50)
    assert interval(lambda x, y: (y - x).mean(), [a, a + 0.3], 1000, 0) == {"lo": 0.3, "hi": 0.3}  # a constant delta
    assert interval(lambda x: x.mean(), [[1.0] * 20], 1000, 0) == {"lo": 1.0, "hi": 1.0}
    lo, hi = interval(lambda x: x.mean(), [a], 2000, 0).values()
    se = a.std() / np.sqrt(len(a))
    assert lo < a.mean() < hi and abs((hi - lo) - 2 * 1.96 * se) < 0.25 * (hi - lo)  # near the normal interval
    assert interval(lambda x: x.mean(), [a], 1000, 3) == interval(lambda x: x.mean(), [a], 1000, 3)  # seeded
    with pytest.raises(ValueError, match="at least 1000"):
        interval(lambda x: x.mean(), [a], 999, 0)


def test_ifeval_delta_of_identical_models_is_zero():
    rows = [[True], [False], [True, True], [False, True]]
    d = ifeval.accuracy_delta(rows, rows, 1000, 0)
    assert d["prompt_level_delta"] == 0 and d["prompt_level_delta_ci"] == {"lo": 0.0, "hi": 0.0}
    assert d["instruction_level_delta_ci"] == {"lo": 0.0, "hi": 0.0}


@pytest.mark.parametrize("n", [2, 3, 7, 60, 61])
def test_derangement_has_no_fixed_point(n):
    for seed in range(5):
        order = nll.derangement(n, seed)
        assert sorted(order) == list(range(n))
        assert all(i != j for i, j in enumerate(order))
    assert nll.derangement(n, 0) == nll.derangement(n, 0)


def test_gap_and_nll_delta():
    own = [[1.0, 1.0], [2.0]]
    other = [[3.0, 1.0], [2.5]]
    items = nll.gap_items(own, other, tokens=1)
    assert items == [2.0, 0.5]
    d = nll.nll_delta(own, [[0.5, 0.5], [1.0]], 1000, 0)
    assert d["nll_delta"] == round((2.0 - 4.0) / 3, 4)
    assert d["nll_delta_ci"]["lo"] <= d["nll_delta"] <= d["nll_delta_ci"]["hi"]


def test_selections_keep_as_many_as_the_threshold():
    from humpback.curation.select import curate

    rated = [{"id": i, "score": s, "response": "x" * n, "ifd": f}
             for i, (s, n, f) in enumerate([(5, 1, 0.9), (4, 9, 0.5), (2, 5, 1.2), (1, 7, 0.95), (None, 99, 0.1)])]
    assert [r["id"] for r in curate(rated, 4)] == [0, 1]
    assert [r["id"] for r in curate(rated, 4, "longest")] == [1, 3]  # the unscored pair is never kept
    assert [r["id"] for r in curate(rated, 4, "ifd")] == [0, 3]  # highest IFD below 1
    assert len(curate(rated, 4, "random", 1)) == 2


def test_loader_checks_kwarg_types(tmp_path):
    path = tmp_path / "set.jsonl"
    path.write_text(json.dumps({"key": 0, "prompt": "x", "instruction_id_list": ["words_at_most"],
                                "kwargs": [{"n": "ten"}]}) + "\n")
    with pytest.raises(HumpbackError, match=r":1: kwargs for 'words_at_most': n must be int"):
        ifeval.load_prompts(str(path))


def test_stale_baselines_are_one_clear_line(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from humpback import paths
    from humpback.evaluation import measure

    monkeypatch.chdir(tmp_path)
    os.makedirs("data")
    inputs = measure.Inputs(heldout=[{}] * 3, ifeval=[{}] * 2, judged=[{}], system=None, tokenizer=None)
    e = SimpleNamespace(judge="rater")
    base = {"model": "base", "losses": [[1.0]] * 3, "ifeval": ["a", "b"], "judged": ["c"], "judged_scores": [3.0]}
    seed = {"model": "seed", "ifeval": ["d", "e"]}
    with open(paths.BASELINES, "w") as f:
        json.dump([base, seed], f)
    assert measure.load_baselines(inputs, e) == {"base": base, "seed": seed}
    for stale in ({**base, "ifeval": ["a"]}, {k: v for k, v in base.items() if k != "judged_scores"}):
        with open(paths.BASELINES, "w") as f:
            json.dump([stale], f)
        with pytest.raises(HumpbackError, match=r"^data/baselines.json: measured on .*run `dvc repro baselines`$"):
            measure.load_baselines(inputs, e)
    assert measure.load_baselines(inputs, SimpleNamespace(judge="self")) == {"base": stale}  # no scores needed


def test_token_losses_are_the_models_loss_on_the_response_tokens(tiny_model, tiny_tokenizer):
    """The output layer runs on the response's positions only: each row's losses must equal the model's
    own loss (labels masked on the prompt) over every position, and truncate as asked."""
    import torch
    from transformers import AutoModelForCausalLM

    from humpback.prompts import forward_text

    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    pairs = [{"instruction": "Name a colour.", "response": "Blue, like the sea on a clear day."},
             {"instruction": "Say hi.", "response": "Hi."}, {"instruction": "Count to three.", "response": "1 2 3"}]
    got = nll.token_losses(model, tiny_tokenizer, pairs, 2, 64, "nll")
    special = not tiny_tokenizer.chat_template
    for p, row in zip(pairs, got):
        prompt_text, completion_text = forward_text(p, tiny_tokenizer, None)
        prompt = tiny_tokenizer(prompt_text, add_special_tokens=special)["input_ids"]
        completion = tiny_tokenizer(completion_text, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prompt + completion])
        labels = torch.tensor([[-100] * len(prompt) + completion])
        with torch.no_grad():
            loss = model(input_ids=ids, labels=labels).loss
        assert len(row) == len(completion)
        assert sum(row) / len(row) == pytest.approx(float(loss), abs=1e-4)
    short = nll.token_losses(model, tiny_tokenizer, pairs, 2, 64, "nll", response_tokens=2)
    assert [len(r) for r in short] == [2, 2, 2]
    assert [x for r in got for x in r[:2]] == pytest.approx([x for r in short for x in r], abs=1e-4)
