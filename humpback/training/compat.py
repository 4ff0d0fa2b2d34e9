"""Every use of a private name of trl, the transformers Trainer or DVCLive, in one place.

These names are not API: a new trl or transformers may move them. tests/test_compat.py checks each one
against the installed versions and names the one that moved; the run key holds the library versions, so
a checkpoint is never resumed across such a change. DVCLive needs none: repro.py overrides only the
public `setup` and `on_log` of its Trainer callback.
"""

from __future__ import annotations

import torch

# trl.trainer.utils: whether the fused LM head gathers the labelled positions first (trl 1.x).
TRL_COMPACT_SWITCH = "_use_triton"
# The Trainer's running sums that a checkpoint does not save (transformers 5.x; the token count is trl's).
RESUMED_COUNTERS = ("_total_loss_scalar", "_initial_global_step", "_total_train_tokens")
# The loss summed since the last logging step (transformers' training loop).
RUNNING_LOSS = "_tr_loss"


def lm_head_on_label_positions_only() -> None:
    """Make trl's fused LM head score only the positions whose next-token label is not -100, on CPU too.

    trl (1.x) gathers the labelled positions before its chunked log-softmax only on Triton devices, where a
    varying number of positions would recompile kernels; elsewhere it projects every position through the
    LM head and zeroes the ignored ones afterwards. On CPU nothing recompiles, and an inverse-SFT example is
    ~90% prompt, so the LM head (a fifth of the model's FLOPs, plus a softmax over 49k logits per position)
    ran mostly for nothing. The compact path computes the same per-token values for the labelled positions
    (tests/test_training_speed_opts.py). Only the `compact` switch in trl.trainer.utils is changed: the
    kernels module keeps its own `_use_triton`, so the torch (not Triton) kernels still run on CPU.
    """
    try:
        import trl.trainer.utils as trl_utils
    except ImportError:
        return
    original = getattr(trl_utils, TRL_COMPACT_SWITCH, None)
    if original is None or getattr(original, "_humpback_compact", False):
        return  # another trl layout (nothing to do), or already patched

    def compact(device) -> bool:
        return torch.device(device).type == "cpu" or original(device)

    compact._humpback_compact = True
    compact._humpback_original = original
    setattr(trl_utils, TRL_COMPACT_SWITCH, compact)


def missing_counters(trainer) -> list[str]:
    """The RESUMED_COUNTERS this trainer lacks (another transformers/trl)."""
    return [a for a in RESUMED_COUNTERS if not hasattr(trainer, a)]


def restore_counters(trainer, total_loss: float, train_tokens: int) -> None:
    """Set the running sums a resumed Trainer restarts at 0, to what an uninterrupted run counted from step 0."""
    trainer._total_loss_scalar = total_loss
    trainer._initial_global_step = 0
    trainer._total_train_tokens = train_tokens


def saved_counters(trainer) -> dict:
    """The running sums at a checkpoint: the loss behind the final train_loss (logged part plus the part
    since the last logging step) and trl's token count."""
    return {"total_loss": trainer._total_loss_scalar + trainer._tr_loss.item(),
            "train_tokens": trainer._total_train_tokens}


def train_tokens(trainer) -> int:
    """trl's count of the tokens trained on (0 where trl keeps none)."""
    return getattr(trainer, "_total_train_tokens", 0)
