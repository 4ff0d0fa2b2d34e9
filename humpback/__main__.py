"""`python -m humpback ...`: the `humpback` command, run by whichever `python` is first on PATH (dvc.yaml
uses this form, so a stage runs in the active environment, a venv included)."""

from .cli import main

main()
