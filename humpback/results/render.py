"""The Jinja2 environment of the results' templates (humpback/results/templates/).

HTML templates (`*.html.j2`) escape every value: the report's own filter `esc` escapes as
`html.escape` does, and anything it misses is still escaped by Jinja. Markdown (`*.md.j2`) is not
escaped. Block tags take their line with them (trim_blocks, lstrip_blocks), and a template's last
newline is kept, so a template reads as the text it writes.
"""

from __future__ import annotations

import functools
import html
import json
import os

import jinja2
from markupsafe import Markup

TEMPLATES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")


def esc(value) -> str:
    """`value` as HTML text or attribute value; None is empty."""
    return Markup(html.escape("" if value is None else str(value), quote=True))


@functools.cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), default_for_string=False),
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,  # a misspelt name is an error, not an empty string
    )
    env.filters["esc"] = esc
    env.filters["f1"] = lambda v: f"{v:.1f}"  # SVG coordinates
    env.filters["json"] = json.dumps  # a value in a card, as JSON (Jinja's own tojson escapes for HTML)
    return env


def render(name: str, **context) -> str:
    return environment().get_template(name).render(**context)


def source(name: str) -> str:
    """A template file's text as it is (the plots page: dvc_render's template, not Jinja's)."""
    with open(os.path.join(TEMPLATES, name), encoding="utf-8") as f:
        return f.read()
