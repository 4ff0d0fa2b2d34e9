.PHONY: setup repro test s3
setup:
	bash scripts/setup

# Quickstart 1: set up, then run the whole pipeline on the bundled corpus with the default model.
repro: setup
	dvc repro

# Quickstart 2: set up, then run the test suite.
test: setup
	python -m pytest -q
