"""Test helpers for pages rendered in headless Chromium (CI installs it: see .ci/run)."""

from __future__ import annotations

import re

import pytest

from humpback.results import browser


def require_chromium() -> str:
    """Fail, not skip: CI installs chromium, so its absence is a broken setup, not an optional feature."""
    exe = browser.find_chromium()
    if exe is None:
        pytest.fail("chromium not found: these tests render pages in headless Chromium; "
                    "install it (apt-get install -y --no-install-recommends chromium, as .ci/run does)")
    return exe


def split_divs(dom: str, cls: str) -> dict[str, str]:
    """{id: html} of the sibling `<div id=... class="...cls...">` blocks of a page, each up to the next."""
    starts = list(re.finditer(rf'<div id="([^"]+)" class="[^"]*\b{cls}\b[^"]*"[^>]*>', dom))
    ends = [m.start() for m in starts[1:]] + [len(dom)]
    return {m.group(1): dom[m.start():end] for m, end in zip(starts, ends)}


def vega_marks(html: str) -> dict[str, list[str]]:
    """The `d` of every SVG path Vega drew as a data mark, by mark type (`rect`, `line`, `symbol`, ...).

    Vega's SVG renderer puts each mark's items in `<g class="mark-TYPE role-mark ...">` (axes, legends
    and titles are other roles)."""
    marks: dict[str, list[str]] = {}
    for m in re.finditer(r'<g class="mark-(\w+) role-mark[^"]*"[^>]*>(.*?)</g>', html, re.S):
        marks.setdefault(m.group(1), []).extend(re.findall(r'<path[^>]*?\sd="([^"]*)"', m.group(2)))
    return marks
