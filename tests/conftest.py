import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

import tiny  # noqa: E402


@pytest.fixture(scope="session")
def repo_root():
    return ROOT


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory):
    """Each test session gets its own result/model cache, never the user's (session scope: module
    fixtures that run `dvc repro` need it too)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HUMPBACK_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "humpback-cache"))
        yield


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    return tiny.build_model(str(tmp_path_factory.mktemp("tiny-model")), ROOT)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model):
    from humpback.models import load_tokenizer

    return load_tokenizer(tiny_model)
