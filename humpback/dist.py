"""The processes of a run: how many `accelerate launch` started, and which one this is.

Read once here, so that no other module parses WORLD_SIZE or LOCAL_RANK. A plain `python` run is one
process and never imports accelerate."""

from __future__ import annotations

import os


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def process_state():
    """accelerate's state of this process: one process under plain `python`, N under `accelerate launch`.
    CPU processes talk over gloo (accelerate takes the CPU path only when asked)."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def is_main_process() -> bool:
    """True in a plain `python` run, and in the main one of the processes `accelerate launch` started:
    the process that writes a stage's outs (the others compute their share and stop)."""
    if world_size() <= 1:
        return True  # no launcher: do not pay for importing accelerate
    return process_state().is_main_process
