"""Best-of-k self-augmentation (humpback.bestofk) on the tiny random model: k sampled candidates per
response, and the chosen one maximises the chooser's per-token PMI."""

import pytest

from humpback import bestofk, prompts
from humpback.curation.rater import relevance
from humpback.engine import Decoding, Engine

RESPONSES = [
    "Boil the kettle, pour the water over the leaves and wait four minutes before you drink it.",
    "A spider has eight legs, and most species also have eight eyes.",
    "Paris is the capital of France and its largest city.",
]


@pytest.fixture(scope="module")
def engine(tiny_model, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    return Engine(model, tiny_tokenizer, "tiny", 4, add_special_tokens=not tiny_tokenizer.chat_template)


def test_k_candidates_are_sampled_and_the_chosen_one_maximises_the_pmi(engine):
    tok = engine.tok
    suffixes = [prompts.backward_suffix(r, tok, 32) for r in RESPONSES]
    sampled = Decoding(max_new_tokens=8, do_sample=True, temperature=0.7, top_p=0.9, seed=3)
    pool = bestofk.sample_instructions(engine, suffixes, sampled, 4)
    assert [len(cs) for cs in pool] == [4, 4, 4]
    assert [cs[0] for cs in pool] == engine.generate(prompts.BACKWARD_PREFIX, suffixes, sampled)  # seed, seed+1, ...
    assert any(len(set(cs)) > 1 for cs in pool)  # sampled, not k copies

    chosen, scores = bestofk.choose(engine, pool, RESPONSES, 16)
    for response, cs, j, row in zip(RESPONSES, pool, chosen, scores):
        assert row[j] == max(s for c, s in zip(cs, row) if c.strip())
        alone = relevance(engine, [{"instruction": c, "response": response} for c in cs], 16)
        assert row == pytest.approx(alone, abs=1e-4)  # the score is the rater's relevance term, batched


def test_an_empty_candidate_is_never_chosen_and_ties_keep_the_first(engine):
    pool = [["", "How do I make tea?", "How do I make tea?"], ["", ""]]
    chosen, scores = bestofk.choose(engine, pool, RESPONSES[:2], 16)
    assert chosen == [1, 0] and scores[0][0] is None and scores[0][1] == scores[0][2] and scores[1] == [None, None]


def test_greedy_or_zero_k_is_refused(engine):
    with pytest.raises(ValueError):
        bestofk.sample_instructions(engine, ["x"], Decoding(max_new_tokens=4), 2)
    with pytest.raises(ValueError):
        bestofk.sample_instructions(engine, ["x"], Decoding(max_new_tokens=4, do_sample=True), 0)
