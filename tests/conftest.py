import fcntl
import os
import shutil
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

import tiny  # noqa: E402

# pytest runs on 2 pytest-xdist workers (pyproject.toml: `-n 2 --dist loadscope`): each module runs whole
# on one worker, so its module fixtures (a `dvc repro` of the tiny pipeline, mostly) run once. Modules
# are handed out in collection order (--no-loadscope-reorder), so the longest go first and the short
# ones fill in at the end. Measured with `python -m pytest -q --durations=0`; the rest keep file order.
# test_launch is second, so the second worker starts on a module that does not wait for tiny_run.
LONGEST_FIRST = ["test_pipeline", "test_launch", "test_experiments", "test_queue_parallel", "test_reproducible",
                 "test_resume", "test_remote", "test_judge", "test_crash", "test_models", "test_rater"]


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(getattr(getattr(item, "module", None), "__name__", ""), len(rank)))


def shared_path(tmp_path_factory, name: str):
    """A path in the directory this test run shares between its xdist workers (without xdist: the
    session's base temp directory)."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # pytest-N/, the parent of each worker's pytest-N/popen-gwK/
    return root / name


def build_once(path, build) -> str:
    """build(path) once per test run, by the first worker that asks; the others wait for it under an
    exclusive lock (released by the kernel if that worker dies, and then the next one builds)."""
    with open(f"{path}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.exists(f"{path}.done"):
            shutil.rmtree(path, ignore_errors=True)  # what a worker that died left half-built
            os.makedirs(path)
            build(str(path))
            open(f"{path}.done", "w").close()
    return str(path)


@pytest.fixture(scope="session")
def repo_root():
    return ROOT


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory):
    """Each test session (each xdist worker) gets its own result/model cache, never the user's (session
    scope: module fixtures that run `dvc repro` need it too). Its `models/` (the default model converted
    from GGUF, 20 s) is one directory for all workers: the conversion writes it atomically. And no DVC
    usage reports."""
    cache = tmp_path_factory.getbasetemp() / "humpback-cache"
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared_path(tmp_path_factory, "humpback-models")
        shared.mkdir(exist_ok=True)
        cache.mkdir(exist_ok=True)
        if not (cache / "models").exists():
            (cache / "models").symlink_to(shared, target_is_directory=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HUMPBACK_CACHE_DIR", str(cache))
        # Every dvc command would otherwise start a daemon that sends a usage report (0.8 s of CPU each,
        # hundreds of commands), and these runs are not usage.
        mp.setenv("DVC_NO_ANALYTICS", "1")
        yield


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A tiny random Llama with its tokenizer, one for all workers (read only)."""
    return build_once(shared_path(tmp_path_factory, "tiny-model"), lambda path: tiny.build_model(path, ROOT))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model):
    from humpback.models import load_tokenizer

    return load_tokenizer(tiny_model)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_model):
    """The tiny pipeline after `dvc repro` in a fresh workspace, with a fresh result cache of its own:
    (workspace, cache), built once per test run for every module that starts from it (test_pipeline,
    test_experiments, test_remote, test_queue_parallel; test_reproducible compares a second clone with
    it). Read only: a module works on its own copy (tiny.copy_workspace), and copies the cache if it
    needs it warm."""

    def build(root):
        ws = tiny.make_workspace(os.path.join(root, "ws"), ROOT, tiny_model)
        proc = tiny.run(["dvc", "repro"], ws, env={"HUMPBACK_CACHE_DIR": os.path.join(root, "cache")})
        assert tiny.ran_stages(proc.stdout) == tiny.STAGES

    root = build_once(shared_path(tmp_path_factory, "tiny-run"), build)
    return os.path.join(root, "ws"), os.path.join(root, "cache")
