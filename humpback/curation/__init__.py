"""Self-curation (the paper's section 2.2): the rater scores each (instruction, response) pair on a
5-point rubric, and the pairs rated at or above a threshold are kept.

- `rater`: the rater's prompt, the signals it is read by, and `Rater` (a scoring mode, as fit);
- `probe`: the linear head and relevance gate of the `probe` scoring mode;
- `check`: the labelled rater check and its metrics;
- `select`: the keep rule, `curate`, and the rate and curate metrics (no torch).

`curation.Rater`, `curation.curate` and the other names below are loaded on first use, so that
importing `humpback.curation.select` (the report) does not load torch and the engine.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "rater": ("Rater", "SCORINGS", "SCORE_LEAD", "CONTENT_FREE", "fit_rater", "check_rater", "rater_prompt_parts",
              "digit_candidates", "rater_suffixes", "content_free_logprobs", "relevance", "rater_features"),
    "probe": ("expected", "fit_head", "head_probs", "fit_gate", "gated_probs"),
    "check": ("RATER_CHECK_FIELDS", "load_rater_check", "rater_check_items", "spearman", "auc",
              "rater_check_metrics", "rating_metrics"),
    "select": ("BINS", "score_bin", "is_kept", "score_histogram", "rate_metrics", "curate", "curate_metrics"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)
    globals()[name] = value  # the next look-up is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
