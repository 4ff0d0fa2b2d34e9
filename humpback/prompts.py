"""The method's prompts: backward (response -> instruction), forward, and the self-curation rater."""

from __future__ import annotations

import re

# Inverse SFT: the backward model reads a response and writes the instruction behind it.
BACKWARD_PREFIX = (
    "Below is a response written by an AI assistant. "
    "Write the instruction that the user most likely gave to get this response.\n\n### Response:\n"
)
BACKWARD_SUFFIX = "{response}\n\n### Instruction:\n"

# Forward SFT and evaluation: instruction -> response.
FORWARD_PREFIX = "Below is an instruction from a user. Write a response that completes the request.\n\n### Instruction:\n"
FORWARD_SUFFIX = "{instruction}\n\n### Response:\n"


def truncate_tokens(text: str, tokenizer, max_tokens: int | None) -> str:
    """Keep the first `max_tokens` tokens of `text`, so the backward model sees a bounded response.

    Cut by tokens, not words: a prompt's length is counted in tokens, and code or numbers take many
    tokens per word."""
    if not max_tokens:
        return text
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return text if len(ids) <= max_tokens else tokenizer.decode(ids[:max_tokens]).rstrip() + " ..."


def backward_suffix(response: str, tokenizer=None, max_tokens: int | None = None) -> str:
    return BACKWARD_SUFFIX.format(response=truncate_tokens(response, tokenizer, max_tokens))


def backward_prompt(response: str, tokenizer=None, max_tokens: int | None = None) -> str:
    return BACKWARD_PREFIX + backward_suffix(response, tokenizer, max_tokens)


def forward_prompt(instruction: str) -> str:
    return FORWARD_PREFIX + FORWARD_SUFFIX.format(instruction=instruction)


# Self-curation. The rubric follows the paper's 5-point scale; the wording and examples are ours.
RATER_RUBRIC = """You judge training data for an AI assistant. Read the instruction and the answer, then decide whether the answer is a good example of how an AI assistant should respond to that instruction. Use this 5-point scale:

1: The answer is incomplete, vague, off-topic, or not what was asked. This includes text in a blog or forum voice, promotional text, and an answer that only restates the question.
2: The answer covers most of the request but not directly, for example by describing a general method instead of giving the solution.
3: The answer is helpful but not written like an AI assistant; it reads like a blog post or a web search result.
4: The answer is written from an AI assistant's point of view and is complete and clear, with minor room for improvement.
5: The answer is a perfect assistant answer: expert knowledge, well organised, and nothing irrelevant.

Give one or two sentences of reasoning, then write "Score: N" on the last line, where N is 1, 2, 3, 4 or 5.
"""

RATER_EXAMPLES = [
    (
        "How many legs does a spider have?",
        "Great question! I have always been fascinated by bugs. Last summer my kids found a huge one in the garage and we spent hours watching it. Check out my other posts about backyard nature!",
        "The answer never gives the number and drifts into a personal blog story with self-promotion.",
        1,
    ),
    (
        "Convert 5 kilometres to miles.",
        "To convert between units, find the conversion factor between them and multiply the value by it. Online calculators can also do this for you.",
        "It explains a general method but does not give the result the user asked for.",
        2,
    ),
    (
        "Why is the sky blue?",
        "Sky color explained: the sky looks blue because of Rayleigh scattering. Shorter blue wavelengths scatter more in the atmosphere. See also: sunsets, clouds, weather.",
        "The content is correct and helpful, but it reads like a snippet from a web page rather than an assistant's reply.",
        3,
    ),
    (
        "Give me a tip for remembering new vocabulary.",
        "Try spaced repetition: review each new word after one day, then after three days, then after a week. Each review at the edge of forgetting makes the memory stronger.",
        "A clear and direct assistant answer with a concrete method; an example word would make it even better.",
        4,
    ),
    (
        "What does the Python expression len(set([1, 2, 2, 3])) return?",
        "It returns 3. `set([1, 2, 2, 3])` removes the duplicate 2 and gives `{1, 2, 3}`, and `len` counts its three elements.",
        "Correct, complete and precise, with a short explanation and nothing irrelevant.",
        5,
    ),
]

PAIR_TEMPLATE = "Instruction: {instruction}\nAnswer: {response}\n"


def rater_prefix() -> str:
    """The part of the rater's message that is the same for every pair (its KV cache is shared)."""
    shots = "".join(
        f"Example {i}\n" + PAIR_TEMPLATE.format(instruction=q, response=a) + f"Reasoning: {why}\nScore: {s}\n\n"
        for i, (q, a, why, s) in enumerate(RATER_EXAMPLES, start=1)
    )
    return f"{RATER_RUBRIC}\n{shots}Now rate this pair.\n"


def rater_pair(instruction: str, response: str) -> str:
    return PAIR_TEMPLATE.format(instruction=instruction, response=response)


# Prompt parts shared by the rater and the judge: a fixed head (its KV cache is shared) and a tail.
SENTINEL = "\x00PAIR\x00"


def chat_parts(tokenizer, fixed: str, plain_tail: str) -> tuple[str, str]:
    """(head, tail) of a one-message user turn that opens with `fixed` text, for prompts built as
    `head + item + tail`: the head is the same for every item (its KV cache is shared). In the chat format
    the tail closes the user turn and opens the assistant's; without a chat template it is `plain_tail`."""
    if not tokenizer.chat_template:
        return fixed, plain_tail
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": fixed + SENTINEL}], add_generation_prompt=True, tokenize=False
    )
    head, tail = text.split(SENTINEL)
    return head, tail


def answer_candidates(tokenizer, lead: str, answers) -> tuple[str, list[int]] | None:
    """Text to append after `lead`, and the token ids of `answers` the model may write next; None when
    no joiner makes each answer one distinct token.

    Tokenizers differ: some have " 1" as one token, others (SmolLM2) write " " then "1"; the joiner is
    chosen so that each answer is exactly one token after `lead + joiner`. The rater reads its score
    digits this way, the judge its two answers.
    """
    for joiner in ("", " "):
        lead_ids = tokenizer(lead + joiner, add_special_tokens=False)["input_ids"]
        ids = []
        for a in answers:
            full = tokenizer(f"{lead} {a}", add_special_tokens=False)["input_ids"]
            if full[: len(lead_ids)] == lead_ids and len(full) == len(lead_ids) + 1:
                ids.append(full[-1])
        if len(ids) == len(answers) and len(set(ids)) == len(answers):
            return joiner, ids
    return None


SCORE_RE = re.compile(r"score\s*(?:\*\*)?\s*[:=]?\s*(?:\*\*)?\s*([1-5])(?:\s*(?:/|out of)\s*5)?(?![0-9.])", re.IGNORECASE)


def parse_score(text: str) -> tuple[int | None, str]:
    """Return (score, reasoning) from the rater's output; score is None when there is none to read.

    The last `Score: N` wins, since a rater may quote the scale before deciding.
    """
    matches = list(SCORE_RE.finditer(text))
    if not matches:
        return None, text.strip()
    last = matches[-1]
    reasoning = text[: last.start()].strip().rstrip("*").strip()
    reasoning = re.sub(r"^reasoning\s*:\s*", "", reasoning, flags=re.IGNORECASE)
    return int(last.group(1)), reasoning


def backward_example(pair: dict, tokenizer=None, max_tokens: int | None = None) -> dict:
    """Inverse SFT example: predict the instruction from the (possibly truncated) response."""
    return {"prompt": backward_prompt(pair["response"], tokenizer, max_tokens), "completion": pair["instruction"]}


# System-prompt tags (paper section 2.3): the fine-tune tells seed data from augmented data, and
# inference asks for the seed style.
TAGS = {"seed": "Answer in the style of an AI Assistant.", "augmented": "Answer with knowledge from web search."}
ASSISTANT_TAG = TAGS["seed"]


def _messages(instruction: str, system: str | None) -> list[dict]:
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": instruction}]


def chat_prompt(tokenizer, instruction: str, system: str | None = None) -> str:
    """The forward prompt as text, up to where the response starts: the model's chat template when it
    has one (the format it is used in by chat tools and inference servers), else the plain template."""
    if tokenizer is not None and tokenizer.chat_template:
        return tokenizer.apply_chat_template(_messages(instruction, system), add_generation_prompt=True,
                                             tokenize=False)
    return (f"{system}\n\n" if system else "") + forward_prompt(instruction)


def forward_example(pair: dict, tokenizer=None, system: str | None = None) -> dict:
    """Forward SFT example: predict the response from the instruction (and the system tag, if any).

    In the chat template it is trl's conversational prompt-completion form, so trl renders it and the
    loss covers the assistant turn, end-of-turn token included."""
    if tokenizer is not None and tokenizer.chat_template:
        return {"prompt": _messages(pair["instruction"], system),
                "completion": [{"role": "assistant", "content": pair["response"]}]}
    return {"prompt": chat_prompt(None, pair["instruction"], system), "completion": pair["response"]}


def forward_text(pair: dict, tokenizer, system: str | None = None) -> tuple[str, str]:
    """(prompt, completion) as text, exactly as training sees them: the completion ends with the
    end-of-turn text of the chat template, or with the EOS token in the plain template."""
    prompt = chat_prompt(tokenizer, pair["instruction"], system)
    if tokenizer.chat_template:
        full = tokenizer.apply_chat_template(
            _messages(pair["instruction"], system) + [{"role": "assistant", "content": pair["response"]}],
            tokenize=False)
        if not full.startswith(prompt):
            raise ValueError("the chat template renders the prompt differently inside the conversation")
        return prompt, full[len(prompt):]
    return prompt, pair["response"] + tokenizer.eos_token
