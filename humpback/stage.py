"""Entry-point wrapper for `stages/*.py`: user errors print one line, never a traceback."""

from __future__ import annotations

import sys

from . import HumpbackError


def run(main) -> None:
    try:
        main()
    except HumpbackError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
