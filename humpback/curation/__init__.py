"""Self-curation (the paper's section 2.2): the rater scores each (instruction, response) pair on a
5-point rubric, and the pairs rated at or above a threshold are kept.

- `rater`: the rater's prompt, the signals it is read by, and `Rater` (a scoring mode, as fit);
- `probe`: the linear head and relevance gate of the `probe` scoring mode;
- `check`: the labelled rater check and its metrics;
- `select`: the keep rule, `curate`, and the rate and curate metrics (no torch).

Import from the module that holds a name (`from humpback.curation.select import curate`): the package
itself imports nothing, so that `select` (the curate stages and the report) loads neither torch nor the
engine, and each stage's dvc.yaml deps are exactly the modules it reads.
"""
