import pytest

from humpback import prompts

from humpback.curation.rater import digit_candidates, rater_prompt_parts
from humpback.curation.select import curate, curate_metrics, rate_metrics


@pytest.mark.parametrize("text,score", [
    ("Reasoning: fine.\nScore: 4", 4),
    ("**Score:** 5/5", 5),
    ("The scale says Score: 1 is bad. This one is good.\nScore: 3", 3),
    ("score = 2", 2),
    ("I would give it score 3 out of 5", 3),
    ("Score: 10", None),
    ("Score: 4.5", None),
    ("no score here", None),
    ("", None),
])
def test_parse_score(text, score):
    assert prompts.parse_score(text)[0] == score


def test_parse_score_returns_reasoning_before_the_score():
    assert prompts.parse_score("Reasoning: clear and complete.\nScore: 5") == (5, "clear and complete.")


def test_rater_prefix_has_rubric_and_worked_examples():
    prefix = prompts.rater_prefix()
    for n in range(1, 6):
        assert f"{n}: " in prefix
        assert f"Score: {n}\n" in prefix  # one worked example per score
    assert prefix.endswith("Now rate this pair.\n")


def test_backward_prompt_truncates_long_responses_by_tokens(tiny_tokenizer):
    long = " ".join(f"w{i}" for i in range(300))
    assert prompts.truncate_tokens("a short reply", tiny_tokenizer, 50) == "a short reply"
    cut = prompts.truncate_tokens(long, tiny_tokenizer, 10)
    assert cut.endswith(" ...") and long.startswith(cut[: -len(" ...")])
    assert len(tiny_tokenizer(cut[: -len(" ...")], add_special_tokens=False)["input_ids"]) <= 10
    ex = prompts.backward_example({"instruction": "Ask", "response": long}, tiny_tokenizer, 10)
    assert ex["completion"] == "Ask" and ex["prompt"].startswith(prompts.BACKWARD_PREFIX)
    assert ex["prompt"].endswith("### Instruction:\n")


def test_rater_prompt_parts_split_at_the_pair(tiny_tokenizer):
    head, template = rater_prompt_parts(tiny_tokenizer, "expected")
    assert head.startswith("<|im_start|>user\n") and head.endswith("Now rate this pair.\n")
    full = head + template.format(pair=prompts.rater_pair("I", "R"))
    assert full.endswith("<|im_start|>assistant\nScore:")
    rendered = tiny_tokenizer.apply_chat_template(
        [{"role": "user", "content": prompts.rater_prefix() + prompts.rater_pair("I", "R")}],
        add_generation_prompt=True, tokenize=False)
    assert full == rendered + "Score:"


def test_digit_candidates_are_single_tokens(tiny_tokenizer):
    joiner, ids = digit_candidates(tiny_tokenizer)
    for d, i in zip("12345", ids):
        text = tiny_tokenizer.decode([i])
        assert text.strip() == d


def test_random_selection_keeps_as_many_as_the_threshold():
    rated = [{"id": str(i), "score": s} for i, s in enumerate([1, 2, 3, 4, 4, 5, None, 2, 5, 3])]
    by_score = curate(rated, 4)
    assert [r["score"] for r in by_score] == [4, 4, 5, 5]
    picks = [curate(rated, 4, "random", seed) for seed in range(5)]
    assert all(len(p) == 4 and all(r["score"] is not None for r in p) for p in picks)
    assert picks[0] == curate(rated, 4, "random", 0)  # seeded
    assert len({tuple(r["id"] for r in p) for p in picks}) > 1  # and not always the same subset
    m = curate_metrics(rated, 5, "random", 1)
    assert m["kept"] == 2 and m["selection"] == "random" and m["kept_at"] == {"3": 6, "4": 4, "5": 2}


def test_curate_threshold_and_metrics_add_up():
    rated = [{"score": s} for s in (1, 2, 3.5, 4, 4.2, 5, None)]
    assert [r["score"] for r in curate(rated, 4)] == [4, 4.2, 5]
    m = curate_metrics(rated, 4)
    assert m["kept"] == 3 and m["kept_at"] == {"3": 4, "4": 3, "5": 1}
    r = rate_metrics(rated)
    assert r["unparsable"] == 1 and sum(r["histogram"].values()) == r["rated"] == 7


def test_long_seed_responses_leave_room_for_the_instruction(tiny_model, tiny_tokenizer, tmp_path):
    """Cut by tokens, a 2,000-word response still leaves the instruction inside max_length, so trl keeps
    the example (it drops those whose prompt alone fills max_length)."""
    from humpback.config import ModelParams, TrainParams
    from humpback.training import train_lora

    long = " ".join(f"word{i} 12345" for i in range(2000))
    pairs = [{"instruction": f"Write a list number {i}.", "response": long} for i in range(6)]
    examples = [prompts.backward_example(p, tiny_tokenizer, 48) for p in pairs]
    scaffold = len(tiny_tokenizer(prompts.backward_prompt(" ..."))["input_ids"])  # the cut's mark included
    assert all(len(tiny_tokenizer(e["prompt"])["input_ids"]) <= scaffold + 48 + 1 for e in examples)
    params = TrainParams(max_steps=1, per_device_train_batch_size=2, max_length=scaffold + 64, logging_steps=1,
                         lora_r=2, lora_alpha=4)
    model_dir = tiny_model
    metrics = train_lora(ModelParams(base=model_dir), params, examples, [], str(tmp_path / "a"), str(tmp_path / "l"))
    assert metrics["dropped_too_long"] == 0 and metrics["train_examples"] == 6
    whole = [prompts.backward_example(p) for p in pairs]  # uncut: every prompt overflows and is dropped
    with pytest.raises(Exception, match="none of 6 examples"):
        train_lora(ModelParams(base=model_dir), params, whole, [], str(tmp_path / "b"), str(tmp_path / "m"))
