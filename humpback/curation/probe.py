"""The probe: a linear head on the rater's hidden state after `Score:` maps it to the five rubric
levels, and a gate on relevance moves off-topic pairs to level 1. Both are fit by L-BFGS on the dev
parts of the rater check (constructed and backtranslated); cut points on the expected score, fit on the
backtranslated dev part, make it an integer rating."""

from __future__ import annotations

import torch


def expected(probs):
    """Probability-weighted rubric score of a `[..., 5]` distribution over 1..5."""
    return (probs * torch.arange(1, 6, dtype=probs.dtype)).sum(-1)


def _head_inputs(feats: list[dict]):
    return torch.tensor([f["hidden"] + f["logprobs"] + [f["relevance"]] for f in feats], dtype=torch.float32)


def fit_head(items: list[dict], feats: list[dict], l2: float = 1.0, steps: int = 500) -> dict:
    """A linear rubric head on the rater's features: multinomial logistic regression onto levels 1-5
    (off-topic pairs are level 1), L2-regularized, fit by L-BFGS on standardized inputs."""
    x = _head_inputs(feats)
    y = torch.tensor([1 if it["offtopic"] else it["level"] for it in items]) - 1
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    z = (x - mean) / std
    w, b = _minimize(lambda w, b: torch.nn.functional.cross_entropy(z @ w + b, y) + l2 * (w ** 2).sum() / len(y),
                     torch.zeros(z.shape[1], 5), torch.zeros(5), steps=steps)
    return {"mean": mean, "std": std, "weight": w, "bias": b}


def _minimize(loss_fn, *init, steps: int):
    """The parameters, from `init`, that minimize `loss_fn(*params)`, by L-BFGS."""
    params = [t.clone().requires_grad_(True) for t in init]
    opt = torch.optim.LBFGS(params, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = loss_fn(*params)
        loss.backward()
        return loss

    opt.step(closure)
    return [t.detach() for t in params]


def head_probs(head: dict, feats: list[dict]):
    z = (_head_inputs(feats) - head["mean"]) / head["std"]
    return (z @ head["weight"] + head["bias"]).softmax(-1)


def on_topic(item: dict) -> bool | None:
    """Whether a dev item's instruction fits its response: its hand label `fits` (backtranslated pairs);
    else (constructed pairs) no for an off-topic swap, yes for an answer at level 2 or more, and neither
    for level 1."""
    if "fits" in item:
        return item["fits"]
    return False if item["offtopic"] else (True if item["level"] >= 2 else None)


def fit_gate(items: list[dict], feats: list[dict], steps: int = 200) -> dict:
    """P(on topic) from relevance alone: a 1-D logistic regression of the items that fit against those
    that do not (`on_topic`). The rubric puts an answer to another question at 1, whatever its quality."""
    on = [(f["relevance"], 1.0) for it, f in zip(items, feats) if on_topic(it)]
    off = [(f["relevance"], 0.0) for it, f in zip(items, feats) if on_topic(it) is False]
    x = torch.tensor([r for r, _ in on + off])
    y = torch.tensor([t for _, t in on + off])
    weight = torch.where(y > 0, len(off) / len(on), 1.0)  # balance the two classes
    a, b = _minimize(lambda a, b: torch.nn.functional.binary_cross_entropy_with_logits(a * x + b, y, weight=weight),
                     torch.ones(1), torch.zeros(1), steps=steps)
    return {"scale": a, "bias": b}


def fit_probe(items: list[dict], feats: list[dict], l2: float) -> dict:
    """The rubric head and the relevance gate, fit on the same items."""
    return {**fit_head(items, feats, l2=l2), **{f"gate_{k}": v for k, v in fit_gate(items, feats).items()}}


def fit_cuts(scores: list[float], levels: list[int]) -> torch.Tensor:
    """Cut points on the expected score for levels 2-5: as many of these pairs rate at or above each level
    as are labelled there, each cut midway between the last pair in and the first one out. The head's most
    likely level is no rating on real pairs: most of them are poor, so it is seldom 4 (docs/labelling.md)."""
    ranked = sorted(scores, reverse=True)
    cuts = []
    for level in (2, 3, 4, 5):
        n = sum(lv >= level for lv in levels)
        cuts.append(ranked[0] + 1.0 if n == 0 else ranked[-1] if n == len(ranked) else (ranked[n - 1] + ranked[n]) / 2)
    return torch.tensor(cuts)


def rating(tensors: dict, probs) -> list[int]:
    """The integer rating 1-5 of each `[5]` level distribution: by the cut points on its expected score where
    the rater has them, else its most likely level (ties: the lower)."""
    if "cuts" in tensors:
        return (1 + (expected(probs)[:, None] >= tensors["cuts"]).sum(-1)).tolist()
    return [1 + max(range(5), key=lambda k: (float(p[k]), -k)) for p in probs]


def gated_probs(tensors: dict, feats: list[dict]):
    """The head's level distribution, with the chance that the instruction does not fit moved to level 1."""
    p = head_probs(tensors, feats)
    on = torch.sigmoid(tensors["gate_scale"] * torch.tensor([f["relevance"] for f in feats]) + tensors["gate_bias"])[:, None]
    return on * p + (1 - on) * torch.nn.functional.one_hot(torch.zeros(len(feats), dtype=torch.long), 5)
