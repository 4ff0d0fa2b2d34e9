"""Batched, prefix-shared, cached generation and scoring on a tiny random model."""

import pytest
import torch

from humpback import models, prompts
from humpback.engine import Decoding, Engine, ResultCache

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
        written = g[0, len(ids):].tolist()
        written = written[: next((i for i, t in enumerate(written) if t in eos_ids), len(written))]  # up to EOS
        outs.append(tok.decode(written, skip_special_tokens=True).strip())
    return outs


@pytest.mark.parametrize("prefill_tokens", [2048, 8], ids=["one-pass-prefill", "sliced-prefill"])
@pytest.mark.parametrize("prefix", [prompts.BACKWARD_PREFIX, ""], ids=["shared-prefix", "no-prefix"])
def test_greedy_batched_equals_unbatched(model, tiny_tokenizer, prefix, prefill_tokens):
    suffixes = [prompts.backward_suffix(r) for r in RESPONSES]
    engine = Engine(model, tiny_tokenizer, "tiny", batch_size=4)
    engine.prefill_tokens = prefill_tokens
    batched = engine.generate(prefix, suffixes, Decoding(max_new_tokens=12))
    reference = unbatched(model, tiny_tokenizer, prefix, suffixes, 12, engine.eos_ids)
    assert batched == reference
    assert any(batched)  # a random model still writes something
    if prefix:  # the shared prefix is computed once, not once per prompt
        assert engine.stats["prompt_tokens_computed"] < engine.stats["prompt_tokens_full"]


@pytest.mark.parametrize("prefill_tokens", [2048, 16], ids=["one-pass-prefill", "sliced-prefill"])
def test_next_token_probs_equal_a_full_forward(model, tiny_tokenizer, prefill_tokens):
    head = prompts.rater_prefix()
    suffixes = [prompts.rater_pair("Say something.", r) + "Score:" for r in RESPONSES]
    cands = [tiny_tokenizer.convert_tokens_to_ids(d) for d in "12345"]
    engine = Engine(model, tiny_tokenizer, "tiny", batch_size=4)
    engine.prefill_tokens = prefill_tokens
    probs = engine.next_token_probs(head, suffixes, cands)
    for s, p in zip(suffixes, probs):
        ids = tiny_tokenizer(head)["input_ids"] + tiny_tokenizer(s, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            ref = model(torch.tensor([ids])).logits[0, -1].softmax(-1)[cands]
        assert p == pytest.approx(ref.tolist(), rel=1e-4, abs=1e-7)


def test_cache_serves_a_rerun_and_a_warm_cache_gives_the_cold_result(model, tiny_tokenizer, tmp_path):
    cache = ResultCache(str(tmp_path / "results.sqlite"))
    suffixes = [prompts.backward_suffix(r) for r in RESPONSES]
    first = Engine(model, tiny_tokenizer, "tiny", 2, cache)
    out3 = first.generate(prompts.BACKWARD_PREFIX, suffixes[:3], Decoding(max_new_tokens=6))
    again = Engine(model, tiny_tokenizer, "tiny", 2, cache)
    assert again.generate(prompts.BACKWARD_PREFIX, suffixes[:3], Decoding(max_new_tokens=6)) == out3
    assert again.stats["cached"] == 3 and again.stats["computed"] == 0
    # Results are cached per batch: with more inputs, batches that changed are computed again, so a warm
    # cache gives exactly what a cold one does. A poisoned entry shows which results came from the cache.
    with cache.db:
        cache.db.execute("UPDATE results SET value = ?", ['"from the 3-item run"'])
    second = Engine(model, tiny_tokenizer, "tiny", 2, cache)
    out6 = second.generate(prompts.BACKWARD_PREFIX, suffixes, Decoding(max_new_tokens=6))
    cold = Engine(model, tiny_tokenizer, "tiny", 2, ResultCache(str(tmp_path / "cold.sqlite")))
    assert out6 == cold.generate(prompts.BACKWARD_PREFIX, suffixes, Decoding(max_new_tokens=6))
    assert second.stats["computed"] == 6 and second.stats["cached"] == 0
    # Different decoding params or weights are different results, never served from the cache.
    third = Engine(model, tiny_tokenizer, "other-weights", 2, cache)
    third.generate(prompts.BACKWARD_PREFIX, suffixes[:3], Decoding(max_new_tokens=6))
    assert third.stats["computed"] == 3


@pytest.mark.parametrize("buffer_cache", [True, False], ids=["buffer-cache", "hf-cache"])
def test_rows_that_stop_early_leave_the_batch_without_changing_the_others(model, tiny_tokenizer, buffer_cache):
    suffixes = [prompts.backward_suffix(r) for r in RESPONSES]
    written = []
    for s in suffixes:  # what each prompt writes when nothing stops it
        ids = tiny_tokenizer(prompts.BACKWARD_PREFIX + s)["input_ids"]
        g = model.generate(torch.tensor([ids]), max_new_tokens=12, min_new_tokens=12, do_sample=False,
                           pad_token_id=tiny_tokenizer.pad_token_id)
        written.append(g[0, len(ids):].tolist())
    # A token some rows write early and others late or never: as an extra EOS, rows finish at different steps.
    common = max({t for ids in written for t in ids[:6]}, key=lambda t: sum(t in ids for ids in written))
    engine = Engine(model, tiny_tokenizer, "tiny", batch_size=6)
    engine.eos_ids = engine.eos_ids + [common]
    engine._buffer_cache = buffer_cache  # the in-place KV buffer, or Hugging Face's own cache class
    batched = engine.generate(prompts.BACKWARD_PREFIX, suffixes, Decoding(max_new_tokens=12))
    assert batched == unbatched(model, tiny_tokenizer, prompts.BACKWARD_PREFIX, suffixes, 12, engine.eos_ids)
    assert engine.stats["decode_tokens_computed"] < len(suffixes) * 11  # finished rows were dropped


def test_sampling_does_not_depend_on_the_batch(model, tiny_tokenizer):
    """Each row samples from its own seeded generator: a resumed run samples what a whole one would."""
    suffixes = [prompts.backward_suffix(r) for r in RESPONSES]
    decoding = Decoding(max_new_tokens=10, do_sample=True, temperature=0.9, top_p=0.9, seed=3)
    together = Engine(model, tiny_tokenizer, "tiny", batch_size=4).generate(prompts.BACKWARD_PREFIX, suffixes, decoding)
    alone = [Engine(model, tiny_tokenizer, "tiny", batch_size=1).generate(prompts.BACKWARD_PREFIX, [s], decoding)[0]
             for s in suffixes]
    assert together == alone
    reseeded = Engine(model, tiny_tokenizer, "tiny", 4).generate(
        prompts.BACKWARD_PREFIX, suffixes, Decoding(max_new_tokens=10, do_sample=True, temperature=0.9, top_p=0.9, seed=4))
    assert reseeded != together


def _old_top_p_filter(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """The engine's hand-written nucleus filter before it used transformers' TopPLogitsWarper (the reference)."""
    sorted_logits, sorted_indices = torch.sort(scores, descending=False)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove = cumulative <= (1 - top_p)
    remove[..., -1:] = False
    return scores.masked_fill(remove.scatter(1, sorted_indices, remove), float("-inf"))


@pytest.mark.parametrize("top_p", [0.0, 1e-7, 0.1, 0.5, 0.9, 0.95, 1 - 1e-7, 1.0])
def test_top_p_warper_filters_as_the_old_filter_did(top_p):
    """The sampler's nucleus filter (TopPLogitsWarper) keeps exactly the tokens the old one kept, scores
    untouched, on random logits, many ties, -inf logits and a one-token vocabulary."""
    from transformers import TopPLogitsWarper

    g = torch.Generator().manual_seed(0)
    cases = [torch.randn(6, 50, generator=g) * 3, torch.randn(3, 1000, generator=g),
             torch.randint(-2, 3, (5, 64), generator=g).float(),  # ties everywhere
             torch.full((2, 16), 0.5), torch.randn(4, 1, generator=g)]
    with_inf = torch.randn(4, 40, generator=g)
    with_inf[:, ::3] = float("-inf")
    cases.append(with_inf)
    for scores in cases:
        for t in (1.0, 0.7):  # the engine filters logits / temperature
            x = scores / t
            got = TopPLogitsWarper(top_p)(None, x)
            assert torch.equal(got, _old_top_p_filter(x, top_p))


def test_rating_in_batches_equals_rating_one_by_one(model, tiny_tokenizer):
    from humpback.curation.rater import Rater

    pairs = [{"id": str(i), "instruction": f"Question {i}?", "response": r} for i, r in enumerate(RESPONSES)]
    add_bos = not tiny_tokenizer.chat_template
    rater = Rater("generate", max_new_tokens=10)
    one = rater.rate(Engine(model, tiny_tokenizer, "tiny", 1, add_special_tokens=add_bos), pairs)
    four = rater.rate(Engine(model, tiny_tokenizer, "tiny", 4, add_special_tokens=add_bos), pairs)
    assert [r["rater_output"] for r in four] == [r["rater_output"] for r in one]
    assert any(r["rater_output"] for r in four)
    rater = Rater("expected")
    one = rater.rate(Engine(model, tiny_tokenizer, "tiny", 1, add_special_tokens=add_bos), pairs)
    four = rater.rate(Engine(model, tiny_tokenizer, "tiny", 4, add_special_tokens=add_bos), pairs)
    assert [r["score_expected"] for r in four] == pytest.approx([r["score_expected"] for r in one], abs=0.011)


def test_continuation_logprobs_equal_a_plain_forward_pass(model, tiny_tokenizer):
    import torch

    prompts_ = [f"Question {i}?" for i in range(len(RESPONSES))]
    engine = Engine(model, tiny_tokenizer, "tiny", 2)
    got = engine.continuation_logprobs("Shared prefix. ", prompts_, RESPONSES)
    for p, r, g in zip(prompts_, RESPONSES, got):
        ctx = tiny_tokenizer("Shared prefix. ", add_special_tokens=False)["input_ids"] + \
            tiny_tokenizer(p, add_special_tokens=False)["input_ids"]
        cont = tiny_tokenizer(r, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = model(torch.tensor([ctx + cont])).logits[0].float().log_softmax(-1)
        want = sum(logp[len(ctx) - 1 + i, t].item() for i, t in enumerate(cont))
        assert g["tokens"] == len(cont) and g["logprob"] == pytest.approx(want, abs=1e-3)
