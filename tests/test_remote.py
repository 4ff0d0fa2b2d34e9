"""The DVC remote `storage` (s3://humpback-dvc/cache) end to end, against a local moto S3 server.

Everything goes through the real `dvc` CLI in subprocesses, as a user would run it: the endpoint is set
with `dvc remote modify --local` (git-ignored .dvc/config.local) and the credentials come from the
environment, exactly as for AWS S3 or MinIO. Nothing in DVC or boto is patched.
"""

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import time

import pytest

import tiny

pytestmark = pytest.mark.slow

STAGES = tiny.STAGES
BUCKET = "humpback-dvc"
PREFIX = "cache/"  # s3://humpback-dvc/cache in .dvc/config
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
# Every DVC-cached out of the pipeline: datasets, adapters (or their "not trained" notes), the rater, the report.
OUTS = [
    "data/guanaco_inverse.json",
    "data/lima_single_turn.json",
    "data/self_augmented.json",
    "data/self_augmented_filtered.json",
    "data/rater_check_scored.json",
    "data/rated_round1.json",
    "data/curated_round1.json",
    "data/eval_samples.json",
    "models/seed",
    "models/rater",
    "models/round1",
    "data/curated_dataset_all_evaluated.json",
    "data/curated_dataset.json",
    "data/lima_heldout.json",
    "models/backward",
    "models/final",
    "reports/curation.html",
]


def md5s(ws: str) -> dict[str, str]:
    """md5 of every file of every out, keyed by its path in the workspace."""
    digests = {}
    for out in OUTS:
        root = os.path.join(ws, out)
        paths = [root] if os.path.isfile(root) else [
            os.path.join(d, f) for d, _, files in os.walk(root) for f in files
        ]
        assert paths, f"{out}: missing or empty"
        for path in paths:
            with open(path, "rb") as f:
                digests[os.path.relpath(path, ws)] = hashlib.md5(f.read()).hexdigest()
    return digests


def cache_objects(ws: str) -> set[str]:
    """Relative paths of the data objects in the local DVC cache (files/md5/xx/yyyy...). Not the run cache
    (`runs/`, kept for stages whose outs are all cached, like `report`): `dvc push` sends it only with
    --run-cache."""
    root = os.path.join(ws, ".dvc", "cache")
    return {os.path.relpath(os.path.join(d, f), root) for d, _, files in os.walk(os.path.join(root, "files"))
            for f in files}


def bucket_objects(endpoint: str) -> set[str]:
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    keys = set()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=PREFIX):
        keys.update(obj["Key"][len(PREFIX):] for obj in page.get("Contents", []))
    return keys


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    # Module fixtures run before conftest's function-scoped autouse fixture, so set the cache dir here too.
    return {"HUMPBACK_CACHE_DIR": str(tmp_path_factory.getbasetemp() / "humpback-cache"), **CREDENTIALS}


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on a free local port for this module, with the bucket of .dvc/config."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                 aws_access_key_id="testing", aws_secret_access_key="testing").create_bucket(Bucket=BUCKET)
    yield endpoint
    server.stop()


def use_endpoint(ws: str, endpoint: str) -> None:
    tiny.run(["dvc", "remote", "modify", "--local", "storage", "endpointurl", endpoint], ws)


@pytest.fixture(scope="module")
def pushed(tmp_path_factory, tiny_run, s3, env):
    """A tiny workspace, reproduced (a copy of conftest's tiny_run: every stage ran), committed (dvc.lock
    included) and pushed; with the md5s of its outs."""
    ws = tiny.copy_workspace(tiny_run[0], str(tmp_path_factory.mktemp("remote-ws")))
    tiny.run(["git", "add", "-A"], ws)
    tiny.run(["git", "commit", "-qm", "tiny repro"], ws)
    use_endpoint(ws, s3)
    proc = tiny.run(["dvc", "push"], ws, env=env)
    assert "files pushed" in proc.stdout, proc.stdout
    return ws, md5s(ws)


def test_committed_config_names_the_s3_remote_and_no_secrets(repo_root):
    with open(os.path.join(repo_root, ".dvc", "config")) as f:
        text = f.read()
    assert "s3://humpback-dvc/cache" in text
    for secret in ("endpointurl", "access_key", "secret", "testing", "127.0.0.1"):
        assert secret not in text, f".dvc/config must not hold {secret!r}: use `dvc remote modify --local`"
    proc = tiny.run(["dvc", "remote", "list", "--project"], repo_root)
    assert proc.stdout.split() == ["storage", "s3://humpback-dvc/cache", "(default)"]
    assert tiny.run(["dvc", "config", "--project", "core.remote"], repo_root).stdout.strip() == "storage"
    # .dvc/config.local (endpoint, keys) is git-ignored by DVC's own .dvc/.gitignore.
    assert tiny.run(["git", "check-ignore", ".dvc/config.local"], repo_root).stdout.strip() == ".dvc/config.local"


def test_push_uploads_the_whole_cache(pushed, s3):
    ws, _ = pushed
    local = cache_objects(ws)
    assert any(p.endswith(".dir") for p in local)  # the two adapter directories
    assert local and bucket_objects(s3) == local
    assert "in sync" in tiny.run(["dvc", "status", "-c"], ws, env=CREDENTIALS).stdout


def test_pull_restores_deleted_outs_and_cache_byte_for_byte(pushed, env):
    ws, before = pushed
    assert len(before) >= 8 + 2 * 2  # the six JSON files, and at least adapter + tokenizer per model
    for out in OUTS:
        path = os.path.join(ws, out)
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    shutil.rmtree(os.path.join(ws, ".dvc", "cache"))
    status = tiny.run(["dvc", "status"], ws, env=env).stdout
    assert "deleted" in status and "models/final" in status, status

    proc = tiny.run(["dvc", "pull"], ws, env=env)
    assert "files fetched" in proc.stdout, proc.stdout
    assert md5s(ws) == before
    assert tiny.run(["dvc", "status"], ws, env=env).stdout.strip() == "Data and pipelines are up to date."
    assert tiny.run(["dvc", "status", "-c"], ws, env=env).stdout.strip() == "Cache and remote 'storage' are in sync."


def test_a_fresh_clone_pulls_the_same_outs(pushed, s3, env, tmp_path):
    ws, before = pushed
    clone = str(tmp_path / "clone")
    tiny.run(["git", "clone", "-q", ws, clone], str(tmp_path))
    assert not os.path.exists(os.path.join(clone, "models", "final"))
    assert not os.path.exists(os.path.join(clone, ".dvc", "config.local"))  # never committed
    use_endpoint(clone, s3)
    assert tiny.run(["git", "status", "--porcelain"], clone).stdout == ""  # config.local stays out of git

    proc = tiny.run(["dvc", "pull"], clone, env=env)
    assert "files fetched" in proc.stdout, proc.stdout
    assert md5s(clone) == before
    assert tiny.run(["dvc", "status"], clone, env=env).stdout.strip() == "Data and pipelines are up to date."
    assert tiny.run(["dvc", "status", "-c"], clone, env=env).stdout.strip() == "Cache and remote 'storage' are in sync."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def default_sigint():
    """Ctrl-C's default action in the child, as in a terminal: a signal ignored when bash starts cannot be
    trapped, and the test worker may run with SIGINT ignored (an earlier test in it left it so), after
    which the script never sees the Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_dev_s3_script_serves_the_remote_until_interrupted(tmp_path_factory, repo_root, tiny_model):
    """scripts/dev-s3 PORT: moto on PORT, the bucket, .dvc/config.local; a push works; Ctrl-C stops it."""
    import boto3

    ws = tiny.make_workspace(str(tmp_path_factory.mktemp("dev-s3-ws")), repo_root, tiny_model)
    script = os.path.join(ws, "scripts", "dev-s3")
    os.makedirs(os.path.dirname(script), exist_ok=True)
    shutil.copy2(os.path.join(repo_root, "scripts", "dev-s3"), script)  # also before it is committed
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = open(os.path.join(str(tmp_path_factory.getbasetemp()), "dev-s3.log"), "w+")
    proc = subprocess.Popen([script, str(port)], cwd=ws, stdout=log, stderr=subprocess.STDOUT,
                            env={k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
                            start_new_session=True, preexec_fn=default_sigint)
    try:
        deadline = time.time() + 60
        while "Ctrl-C" not in open(log.name).read() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None and "Ctrl-C" in open(log.name).read(), open(log.name).read()

        remote = tiny.run(["dvc", "config", "--local", "--list"], ws).stdout
        assert f"remote.storage.endpointurl={endpoint}" in remote
        assert "remote.storage.access_key_id=testing" in remote
        assert "remote.storage.secret_access_key=testing" in remote
        assert tiny.run(["git", "status", "--porcelain", ".dvc"], ws).stdout == ""

        with open(os.path.join(ws, "data", "hello.txt"), "w") as f:
            f.write("hello from dev-s3\n")
        tiny.run(["dvc", "add", "data/hello.txt"], ws)
        assert "1 file pushed" in tiny.run(["dvc", "push", "data/hello.txt.dvc"], ws).stdout
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
        md5 = hashlib.md5(b"hello from dev-s3\n").hexdigest()
        s3.head_object(Bucket=BUCKET, Key=f"{PREFIX}files/md5/{md5[:2]}/{md5[2:]}")
        s3.close()

        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        assert proc.wait(timeout=20) == 130
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
    finally:
        if proc.poll() is None:  # the script and its moto server share the session we gave them
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
