"""Batched, prefix-shared, cached generation and scoring on a tiny random model."""

import pytest
import torch

from humpback import models, prompts
from humpback.generation import Decoding, Engine, ResultCache

RESPONSES = [
    "Water boils at 100 degrees Celsius at sea level.",
    "Use a list comprehension: squares = [x * x for x in range(10)].",
    "Paris.",
    "Start with a short warm-up, then run at an easy pace for twenty minutes, and finish by walking.",
    "The French Revolution began in 1789 and reshaped European politics for a century.",
    "Mix flour, water, salt and yeast, let it rise overnight, shape, and bake at 230 C.",
]


@pytest.fixture(scope="module")
def model(tiny_model):
    return models.load_model(tiny_model)


def unbatched(model, tok, prefix, suffixes, max_new_tokens, eos_ids):
    """The naive reference: one `generate` call per full prompt, no padding, no shared cache."""
    outs = []
    for s in suffixes:
        ids = tok(prefix)["input_ids"] + tok(s, add_special_tokens=False)["input_ids"]
        g = model.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False,
                           eos_token_id=eos_ids, pad_token_id=tok.pad_token_id)
        outs.append(tok.decode(g[0, len(ids):], skip_special_tokens=True).strip())
    return outs


def test_greedy_batched_equals_unbatched(model, tiny_tokenizer):
    suffixes = [prompts.backward_suffix(r) for r in RESPONSES]
    engine = Engine(model, tiny_tokenizer, "tiny", batch_size=4)
    batched = engine.generate(prompts.BACKWARD_PREFIX, suffixes, Decoding(max_new_tokens=12))
    reference = unbatched(model, tiny_tokenizer, prompts.BACKWARD_PREFIX, suffixes, 12, engine.eos_ids)
    assert batched == reference
    assert any(batched)  # a random model still writes something
    # The shared prefix is computed once, not once per prompt.
    assert engine.stats["prompt_tokens_computed"] < engine.stats["prompt_tokens_full"]


def test_next_token_probs_equal_a_full_forward(model, tiny_tokenizer):
    head = prompts.rater_prefix()
    suffixes = [prompts.rater_pair("Say something.", r) + "Score:" for r in RESPONSES]
    cands = [tiny_tokenizer.convert_tokens_to_ids(d) for d in "12345"]
    engine = Engine(model, tiny_tokenizer, "tiny", batch_size=4)
    probs = engine.next_token_probs(head, suffixes, cands)
    for s, p in zip(suffixes, probs):
        ids = tiny_tokenizer(head)["input_ids"] + tiny_tokenizer(s, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            ref = model(torch.tensor([ids])).logits[0, -1].softmax(-1)[cands]
        assert p == pytest.approx(ref.tolist(), rel=1e-4, abs=1e-7)


def test_cache_serves_a_rerun_and_grows_with_more_inputs(model, tiny_tokenizer, tmp_path):
    cache = ResultCache(str(tmp_path / "results.sqlite"))
    suffixes = [prompts.backward_suffix(r) for r in RESPONSES]
    first = Engine(model, tiny_tokenizer, "tiny", 2, cache)
    out3 = first.generate(prompts.BACKWARD_PREFIX, suffixes[:3], Decoding(max_new_tokens=6))
    second = Engine(model, tiny_tokenizer, "tiny", 2, cache)
    out6 = second.generate(prompts.BACKWARD_PREFIX, suffixes, Decoding(max_new_tokens=6))
    assert out6[:3] == out3
    assert second.stats["cached"] == 3 and second.stats["computed"] == 3
    # Different decoding params or weights are different results, never served from the cache.
    third = Engine(model, tiny_tokenizer, "other-weights", 2, cache)
    third.generate(prompts.BACKWARD_PREFIX, suffixes[:3], Decoding(max_new_tokens=6))
    assert third.stats["computed"] == 3
