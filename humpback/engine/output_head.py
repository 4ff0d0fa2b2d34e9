"""The rater's last-layer hidden state where the engine returns log-probabilities only (vLLM), and the
refusal of `curation.scoring: probe` where it cannot be had.

For a linear output layer without bias, log p = W h - logsumexp, so h is the least-squares solution of
[W | 1] [h; c] = log p (exact up to rounding: vocabulary >> hidden size). Where that does not hold (a
soft-capped or scaled output layer), reading `"hidden"` raises an error naming `curation.scoring: probe`.
"""

from __future__ import annotations

import os

from .. import HumpbackError

PROBE_HINT = ("curation.scoring: probe reads the rater's last hidden state, which this engine: vllm cannot give "
              "(vLLM returns tokens and log-probabilities only): use engine: native for the probe, "
              "or scoring expected / calibrated / generate with vLLM")


def require_hidden_state(scoring: str, engine) -> None:
    """Fail before any computation when `scoring` needs a hidden state that `engine` cannot give."""
    if scoring == "probe" and getattr(engine, "supports_hidden_state", True) is False:
        raise HumpbackError(f"{PROBE_HINT} (this engine: {engine.head})")


class FeaturesWithoutHidden(dict):
    """A `next_token_features` record without the hidden state: reading `"hidden"` (directly, or by
    copying the record with `{**record}`) raises the error that says why."""

    why = PROBE_HINT

    def keys(self):
        return [*super().keys(), "hidden"]

    def __iter__(self):
        return iter(self.keys())

    def __getitem__(self, key):
        if key == "hidden":
            raise HumpbackError(self.why)
        return super().__getitem__(key)


class OutputHead:
    """Recovers the last-layer hidden state from the full next-token log-probability vector, for an output
    layer `logits = W h` (no bias, no scaling or soft-capping): log p = W h - c, so [W | 1] [h; -c] = log p,
    solved by least squares (normal equations in float64, factored once)."""

    def __init__(self, weight):
        import torch

        a = torch.cat([weight.double(), weight.new_ones(weight.shape[0], 1, dtype=torch.float64)], dim=1)
        self.a = a
        self.chol = torch.linalg.cholesky(a.T @ a)
        self.vocab, self.hidden = weight.shape

    @classmethod
    def from_model_dir(cls, path: str) -> "OutputHead | str":
        """The head of the model in `path`, or why its hidden state cannot be recovered."""
        import glob
        import json

        from safetensors import safe_open

        with open(os.path.join(path, "config.json")) as f:
            config = json.load(f)
        config = {**config, **config.get("text_config", {})}
        for key in ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale"):
            if config.get(key) not in (None, 1, 1.0):
                return f"its output layer is scaled or soft-capped ({key})"
        names = ["lm_head.weight"] if not config.get("tie_word_embeddings") else []
        names += ["model.embed_tokens.weight", "lm_head.weight"]
        for file in sorted(glob.glob(os.path.join(path, "*.safetensors"))):
            with safe_open(file, "pt") as st:
                keys = set(st.keys())
                if "lm_head.bias" in keys:
                    return "its output layer has a bias"
                for name in names:
                    if name in keys:
                        return cls(st.get_tensor(name))
        return "no output layer weight found in its safetensors"

    def recover(self, logprobs) -> list[float]:
        import torch

        rhs = self.a.T @ torch.as_tensor(logprobs, dtype=torch.float64)
        solution = torch.cholesky_solve(rhs[:, None], self.chol)[:, 0]
        return solution[: self.hidden].float().tolist()
