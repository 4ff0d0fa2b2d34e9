"""The full recipe's parts: chat-template training examples, tags, seed mix, and which model rates."""

import pytest

from humpback import paths, prompts, recipe
from humpback.config import FinetuneParams, Params

PAIRS = [{"id": f"x{i}", "instruction": f"Question number {i}?", "response": f"Answer {i}, in a few words."}
         for i in range(6)]


def test_forward_text_is_what_trl_trains_on(tiny_model, tiny_tokenizer):
    """The evaluation's (prompt, completion) tokens are exactly trl's tokenised conversational example and
    its completion mask, with and without a system tag: held-out NLL scores what the fine-tune learns."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from humpback.models import load_model

    systems = [None, prompts.TAGS["seed"], prompts.TAGS["augmented"]]
    examples = [prompts.forward_example(p, tiny_tokenizer, s) for p, s in zip(PAIRS, systems)]
    assert isinstance(examples[0]["prompt"], list)  # conversational: the tokenizer has a chat template
    trainer = SFTTrainer(model=load_model(tiny_model), processing_class=tiny_tokenizer,
                         train_dataset=Dataset.from_list(examples),
                         args=SFTConfig(output_dir="/tmp/unused-sft", use_cpu=True, bf16=False, report_to="none",
                                        max_length=512))
    for row, pair, system in zip(trainer.train_dataset, PAIRS, systems):
        prompt, completion = prompts.forward_text(pair, tiny_tokenizer, system)
        p_ids = tiny_tokenizer(prompt, add_special_tokens=False)["input_ids"]
        c_ids = tiny_tokenizer(completion, add_special_tokens=False)["input_ids"]
        assert row["input_ids"] == p_ids + c_ids
        assert row["labels"] == [-100] * len(p_ids) + c_ids
        assert completion.startswith(pair["response"]) and completion != pair["response"]  # end of turn learnt
        assert (system or "") in prompt


def test_plain_template_without_a_chat_template(tmp_path, repo_root):
    import tiny

    tok = tiny.build_tokenizer(str(tmp_path), tiny.corpus_lines(repo_root), chat=False)
    ex = prompts.forward_example(PAIRS[0], tok, prompts.ASSISTANT_TAG)
    assert ex == {"prompt": prompts.ASSISTANT_TAG + "\n\n" + prompts.forward_prompt(PAIRS[0]["instruction"]),
                  "completion": PAIRS[0]["response"]}
    assert prompts.forward_text(PAIRS[0], tok) == (prompts.forward_prompt(PAIRS[0]["instruction"]),
                                                   PAIRS[0]["response"] + tok.eos_token)


@pytest.mark.parametrize("mix_seed,tags,seed_pairs,expected_seed", [
    (False, False, 0, 0), (True, False, 0, 6), (True, True, 4, 4), (False, True, 4, 0)])
def test_finetune_examples_mix_seed_and_tags(tiny_tokenizer, mix_seed, tags, seed_pairs, expected_seed):
    curated = PAIRS[:3]
    seed = [{**p, "id": "seed-" + p["id"], "instruction": "Seed " + p["instruction"]} for p in PAIRS]
    p = FinetuneParams(mix_seed=mix_seed, tags=tags, seed_pairs=seed_pairs)
    examples = recipe.finetune_examples(curated, seed, tiny_tokenizer, p)
    assert len(examples) == len(curated) + expected_seed
    user = [next(m["content"] for m in e["prompt"] if m["role"] == "user") for e in examples]
    systems = [next((m["content"] for m in e["prompt"] if m["role"] == "system"), None) for e in examples]
    from_seed = [u.startswith("Seed ") for u in user]
    assert sum(from_seed) == expected_seed
    assert {u for u, s in zip(user, from_seed) if not s} == {x["instruction"] for x in curated}
    for s, is_seed in zip(systems, from_seed):
        assert s == ((prompts.TAGS["seed"] if is_seed else prompts.TAGS["augmented"]) if tags else None)
    # the sample of seed pairs grows with seed_pairs and depends on finetune.seed only
    again = recipe.finetune_examples(curated, seed, tiny_tokenizer, p)
    assert again == examples


def test_rater_and_judge_models():
    params = Params()
    base = params.model.base
    assert recipe.rater_model(params) == (params.curation.rater, None)
    assert recipe.judge_model(params) == (params.curation.rater, None)  # judge: rater
    assert not recipe.seed_model_needed(params)
    params.curation.rater = "self"
    assert recipe.rater_model(params) == (base, paths.SEED_MODEL)
    assert recipe.judge_model(params) == (base, paths.SEED_MODEL)
    assert recipe.seed_model_needed(params)
    params.evaluate.judge = "some/judge"
    assert recipe.judge_model(params) == ("some/judge", None)
    params.curation.rater = base
    assert not recipe.seed_model_needed(params)
    params.evaluate.judge = "self"
    assert recipe.seed_model_needed(params) and recipe.judge_model(params) == (base, paths.SEED_MODEL)


def test_round_argument():
    assert recipe.round_arg(["x"]).model == "models/final"
    assert recipe.round_arg(["x", "round1"]).model == "models/round1"
    from humpback import HumpbackError

    with pytest.raises(HumpbackError, match="unknown round 'round3'"):
        recipe.round_arg(["x", "round3"])


def test_iterations_param_is_checked(tmp_path):
    from humpback import HumpbackError
    from humpback.config import load_params

    (tmp_path / "params.yaml").write_text("curation:\n  iterations: 3\n")
    with pytest.raises(HumpbackError, match="curation.iterations must be 1 or 2"):
        load_params(str(tmp_path / "params.yaml"))
