"""Instruction backtranslation (Humpback, Li et al. 2023) as a DVC pipeline."""

__version__ = "0.1.0"


class HumpbackError(Exception):
    """A user-facing error: the message is printed as one line, without a traceback."""
