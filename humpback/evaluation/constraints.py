"""Verifiable instructions (after IFEval, Zhou et al. 2023): one checker per constraint type.

Each checker is `check(response, **kwargs) -> bool` on the response as written (IFEval's "strict"
mode: no stripping of markdown or of a first or last line). Words are runs of letters, digits and
apostrophes; sentences end at `.`, `!` or `?` followed by a space or the end; phrases and keywords
compare case-insensitively, as IFEval's checkers do.
"""

from __future__ import annotations

import json
import re

CHECKERS: dict = {}


def checker(name: str):
    def register(fn):
        CHECKERS[name] = fn
        return fn
    return register


def words(text: str) -> list[str]:
    return re.findall(r"[A-Za-z0-9]+(?:['’][A-Za-z]+)*", text)


def sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if words(s)]


def _has(text: str, word: str) -> int:
    return len(re.findall(rf"(?<![A-Za-z0-9]){re.escape(word)}(?![A-Za-z0-9])", text, flags=re.IGNORECASE))


@checker("words_at_most")
def words_at_most(response: str, n: int) -> bool:
    return 0 < len(words(response)) <= n


@checker("words_at_least")
def words_at_least(response: str, n: int) -> bool:
    return len(words(response)) >= n


@checker("sentences_at_most")
def sentences_at_most(response: str, n: int) -> bool:
    return 0 < len(sentences(response)) <= n


@checker("bullet_list")
def bullet_list(response: str, n: int) -> bool:
    """Exactly n markdown bullets (`* ` or `- ` at a line's start)."""
    return len(re.findall(r"^\s*[*-]\s+\S", response, flags=re.MULTILINE)) == n


@checker("numbered_list")
def numbered_list(response: str, n: int) -> bool:
    """Exactly n numbered items (`1.` or `1)` at a line's start)."""
    return len(re.findall(r"^\s*\d+[.)]\s+\S", response, flags=re.MULTILINE)) == n


@checker("lowercase")
def lowercase(response: str) -> bool:
    return bool(re.search(r"[a-z]", response)) and response == response.lower()


@checker("uppercase")
def uppercase(response: str) -> bool:
    return bool(re.search(r"[A-Z]", response)) and response == response.upper()


@checker("include_keywords")
def include_keywords(response: str, keywords: list[str]) -> bool:
    return all(_has(response, k) for k in keywords)


@checker("exclude_keywords")
def exclude_keywords(response: str, keywords: list[str]) -> bool:
    return bool(response.strip()) and not any(_has(response, k) for k in keywords)


@checker("keyword_frequency")
def keyword_frequency(response: str, keyword: str, n: int) -> bool:
    return _has(response, keyword) >= n


@checker("start_with")
def start_with(response: str, phrase: str) -> bool:
    return response.strip().lower().startswith(phrase.lower())


@checker("end_with")
def end_with(response: str, phrase: str) -> bool:
    return response.strip().lower().endswith(phrase.lower())


@checker("json_format")
def json_format(response: str) -> bool:
    """The whole response is one JSON value (a ```json fence around it is allowed, as in IFEval)."""
    text = re.sub(r"^```(?:json|JSON)?\s*|\s*```$", "", response.strip())
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


@checker("title")
def title(response: str) -> bool:
    """A title in double angular brackets, such as <<a title>>."""
    return bool(re.search(r"<<[^<>\n]*[^\s<>][^<>\n]*>>", response))


@checker("no_comma")
def no_comma(response: str) -> bool:
    return bool(response.strip()) and "," not in response


@checker("placeholders")
def placeholders(response: str, n: int) -> bool:
    """At least n placeholders in square brackets, such as [name]."""
    return len(re.findall(r"\[[^\[\]\n]*[^\s\[\]][^\[\]\n]*\]", response)) >= n


@checker("postscript")
def postscript(response: str, marker: str = "P.S.") -> bool:
    """A postscript: the marker after some text, where a word starts."""
    text, mark = response.strip().lower(), marker.lower()
    at = text.find(mark)
    return at > 0 and text[at - 1].isspace()


@checker("repeat_request")
def repeat_request(response: str, request: str) -> bool:
    """The response starts with the request, word for word, and then answers it."""
    head = response.strip().lower()
    return head.startswith(request.strip().lower()) and bool(words(head[len(request.strip()):]))


@checker("quotation")
def quotation(response: str) -> bool:
    text = response.strip()
    return len(text) > 2 and text[0] == '"' and text[-1] == '"'


@checker("highlights")
def highlights(response: str, n: int) -> bool:
    """At least n sections highlighted in markdown, *like this* (not **bold** markers)."""
    return len(re.findall(r"(?<!\*)\*[^\s*][^*\n]*\*(?!\*)", response)) >= n


def check(response: str, instruction_id: str, kwargs: dict) -> bool:
    return CHECKERS[instruction_id](response, **kwargs)
