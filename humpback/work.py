"""What a stage pushed through the model, in tokens: the FLOP count of the pipeline benchmark
(benchmarks/bench_pipeline.py). It goes to the git-ignored `logs/work.jsonl` beside the stage's time, never
into a DVC out (a warm cache computes less, and the outs must not depend on that).

- `forward`: tokens a forward pass needed: a shared prefix once, each prompt without its padding, and
  each generated token (2N FLOPs per token for a model of N parameters);
- `forward_padded`: tokens the forward passes computed, padding included;
- `train`: tokens trained, forward and backward (4N per token under LoRA: no weight gradients of the base);
- `train_eval`: the evaluation passes during training (2N per token).
"""

from __future__ import annotations

from collections import Counter

TOKENS: Counter = Counter()


def add(**tokens: int) -> None:
    TOKENS.update({k: int(v) for k, v in tokens.items()})


def flops(tokens: dict, n_params: float) -> float:
    """FLOPs of this work for a model of `n_params` parameters: 2N per forward token, 4N per trained one."""
    return n_params * (2 * (tokens.get("forward", 0) + tokens.get("train_eval", 0)) + 4 * tokens.get("train", 0))
