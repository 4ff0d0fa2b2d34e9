.PHONY: setup repro test s3 docs
setup:
	bash scripts/setup

# Quickstart 1: set up, then run the whole pipeline on the bundled corpus with the default model.
repro: setup
	dvc repro

# A local S3 API server (moto) on 127.0.0.1:5555 with the bucket and the --local remote config.
s3:
	bash scripts/dev-s3

# Quickstart 2: set up, then run the test suite (on 2 xdist workers: pyproject.toml; it lists its 10
# slowest tests at the end); then the vLLM engine's tests, in a venv with vLLM added.
test: setup
	python -m pytest -q --durations=10
	python -m mkdocs build --strict --quiet   # the docs site: a broken link, anchor or snippet fails
	bash scripts/test-vllm

# The documentation site, offline (writes site/; `python -m mkdocs serve` previews it).
docs:
	python -m mkdocs build --strict
