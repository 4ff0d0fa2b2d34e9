"""`humpback publish`: the backward model, the final model and the curated dataset on the Hugging Face Hub.

Each repository gets a card (README.md) written from what the project records about the artifact:
the git revision, the params that produced it, its metrics, the rater check, and the md5 that dvc.lock
holds for it. `--dry-run` writes the cards and file lists to a local folder and uploads nothing.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass

import yaml

from .. import HumpbackError
from ..config import load_params
from . import report as report_page
from .render import render

PAPER = "https://arxiv.org/abs/2308.06259"
TAGS = ["humpback", "instruction-backtranslation", "self-curation", "dvc"]


@dataclass(frozen=True)
class Artifact:
    key: str  # backward | final | curated
    repo_type: str  # model | dataset
    stage: str  # the dvc.yaml stage whose out it is
    paths: tuple[str, ...]  # project-relative: one folder (model) or files (dataset)
    params: tuple[str, ...]  # params.yaml sections that produced it
    metrics: tuple[str, ...]  # metrics/*.json shown on the card, when they exist


ARTIFACTS = (
    Artifact("backward", "model", "inverse_sft", ("models/backward",), ("model", "inverse_sft"),
             ("inverse_sft.json",)),
    Artifact("final", "model", "finetune", ("models/final",), ("model", "curation", "finetune", "evaluate"),
             ("curate.json", "finetune.json", "evaluate.json")),
    Artifact("curated", "dataset", "curate", ("data/curated_dataset.json", "data/curated_dataset_all_evaluated.json"),
             ("data", "augment", "filter", "curation"), ("self_augment.json", "filter.json", "rate.json", "curate.json")),
)


# ------------------------------------------------------------------------------------- provenance


def git_revision(project: str) -> tuple[str, bool]:
    """(HEAD commit, whether tracked files differ from it); ("unknown", False) outside git."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=project, capture_output=True, text=True)

    head = git("rev-parse", "HEAD")
    if head.returncode != 0:
        return "unknown", False
    # Untracked files do not count: DVC outs are git-ignored, and a dry run writes publish/.
    dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip() != ""
    return head.stdout.strip(), dirty


def lock_outs(project: str, artifact: Artifact) -> dict[str, dict]:
    """{path: its out entry in dvc.lock (md5, size, nfiles)} for the artifact's paths."""
    try:
        with open(os.path.join(project, "dvc.lock"), encoding="utf-8") as f:
            lock = yaml.safe_load(f) or {}
    except FileNotFoundError:
        return {}
    # every stage: a dataset's files can come from different stages (rerate writes the final ratings)
    outs = [o for stage in (lock.get("stages") or {}).values() for o in stage.get("outs") or []]
    return {o["path"]: o for o in outs if o.get("path") in artifact.paths}


def read_metrics(project: str, names) -> dict[str, dict]:
    found = {}
    for name in names:
        path = os.path.join(project, "metrics", name)
        if os.path.exists(path):
            try:
                with open(path, encoding="utf-8") as f:
                    found[name] = json.load(f)
            except json.JSONDecodeError as e:
                raise HumpbackError(f"metrics/{name}: invalid JSON ({e.msg} at line {e.lineno})") from None
    return found


def artifact_files(project: str, artifact: Artifact) -> list[tuple[str, str, int]]:
    """(absolute path, path in the repo, size) of every file to upload, README.md excluded (ours replaces it)."""
    files = []
    for rel in artifact.paths:
        path = os.path.join(project, rel)
        if not os.path.exists(path):
            raise HumpbackError(f"{rel} not found: run `dvc pull` or `dvc repro` first")
        if os.path.isdir(path):
            for d, _, names in os.walk(path):
                for n in names:
                    full = os.path.join(d, n)
                    files.append((full, os.path.relpath(full, path)))
        else:
            files.append((path, os.path.basename(rel)))
    return sorted((full, rel, os.path.getsize(full)) for full, rel in files if rel != "README.md")


# ----------------------------------------------------------------------------------------- cards


def hub_id(ref: str) -> str | None:
    """`ref` if it names a Hub repo (owner/name), not a local path, a GGUF file or a pkg:// reference."""
    if "://" in ref or ref.endswith(".gguf") or os.path.exists(ref):
        return None
    return ref if re.fullmatch(r"[\w.-]+/[\w.-]+", ref) else None


def flatten(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from flatten(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


METRIC_NOTES = {
    "inverse_sft.json": "training of the backward model (loss on its seed pairs, eval loss on held-out ones)",
    "finetune.json": "training of the final model on the curated pairs",
    "evaluate.json": "negative log-likelihood per response token on held-out pairs, base model vs. this one "
                     "(lower is better)",
    "curate.json": "how many rated pairs the threshold kept, and how many thresholds 3, 4 and 5 would keep",
    "rate.json": "the rater's scores: how many parsed, their mean and histogram",
    "self_augment.json": "the instructions the backward model wrote",
}


def metrics_tables(metrics: dict[str, dict]) -> list[dict]:
    """Per metrics file: its name, what it measures, and its (flattened key, value) rows."""
    return [{"name": name, "note": METRIC_NOTES.get(name), "rows": list(flatten(values))}
            for name, values in metrics.items()]


def rater_check_rows(check: dict) -> list[tuple[str, str]]:
    """(label, value as the card writes it) of the rater check's metrics, labelled as the report labels them."""
    rows = [(label, json.dumps(value)) for label, value in report_page.rater_check_rows(check)]
    levels = check.get("constructed", check).get("mean_by_level")
    if isinstance(levels, dict):
        rows.append(("mean score by intended level", ", ".join(
            f"{k}: {v:.3f}" if isinstance(v, float) else f"{k}: {v}" for k, v in levels.items())))
    return rows


def card(project: str, artifact: Artifact, repos: dict[str, str], base_model: str | None) -> str:
    from huggingface_hub import DatasetCard, DatasetCardData, ModelCard, ModelCardData

    params = load_params(os.path.join(project, "params.yaml"))
    rev, dirty = git_revision(project)
    metrics = metrics_tables(read_metrics(project, artifact.metrics))
    check = read_metrics(project, ["rater_check.json"]).get("rater_check.json")
    base = base_model or hub_id(params.model.base)
    adapter = artifact.repo_type == "model" and os.path.exists(
        os.path.join(project, artifact.paths[0], "adapter_config.json"))

    if artifact.repo_type == "model":
        datasets = [repos["curated"]] if artifact.key == "final" else (
            [params.data.guanaco_hub] if params.data.source == "hub" else [])
        data = ModelCardData(license="apache-2.0", base_model=base, library_name="peft" if adapter else "transformers",
                             tags=TAGS + (["lora"] if adapter else []), datasets=datasets or None,
                             pipeline_tag="text-generation")
        title, card_cls = f"humpback {artifact.key} model", ModelCard
    else:
        n = len(_records(project, "data/curated_dataset_all_evaluated.json"))
        # Hub data (LIMA) comes with its own terms: no blanket apache-2.0 then.
        license = {"license": "apache-2.0"} if params.data.source == "bundled" else {
            "license": "other", "license_name": "see-source-datasets"}
        data = DatasetCardData(**license,
                               language=["en"], task_categories=["text-generation"], tags=TAGS + ["synthetic"],
                               size_categories=["n<1K" if n < 1000 else "1K<n<10K" if n < 10_000 else "10K<n<100K"],
                               configs=[{"config_name": "curated", "data_files": "curated_dataset.json", "default": True},
                                        {"config_name": "all_evaluated", "data_files": "curated_dataset_all_evaluated.json"}])
        title, card_cls = "humpback self-curated data", DatasetCard

    outs = lock_outs(project, artifact)
    picked = {section: dataclasses.asdict(getattr(params, section)) for section in artifact.params}
    body = render(
        "card.md.j2", title=title, artifact=artifact, repos=repos, repo=repos[artifact.key], paper=PAPER,
        params=params, base=base, adapter=adapter, metrics=metrics,
        check=check, check_rows=rater_check_rows(check) if check is not None else [],
        params_yaml=yaml.safe_dump(picked, sort_keys=False), rev=rev, dirty=dirty,
        outs=[(path, outs.get(path)) for path in artifact.paths])
    return str(card_cls(f"---\n{data.to_yaml()}\n---\n\n{body}"))


def _records(project: str, rel: str) -> list:
    path = os.path.join(project, rel)
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise HumpbackError(f"{rel}: invalid JSON ({e.msg} at line {e.lineno})") from None


# ---------------------------------------------------------------------------------------- publish


def repo_ids(namespace: str | None, overrides: dict[str, str | None], keys) -> dict[str, str]:
    ids = {}
    for key in ("backward", "final", "curated"):
        if overrides.get(key):
            ids[key] = overrides[key]
        elif namespace:
            ids[key] = f"{namespace}/humpback-{key}"
        elif key in keys or key == "curated":  # the final model's card links the dataset
            raise HumpbackError("--namespace is required (or --backward-repo, --final-repo and --dataset-repo)")
    return ids


def stage_folder(dest: str, files, readme: str) -> None:
    """The repository's content in `dest`: hard links to the artifact's files (copies across devices), and the card."""
    for full, rel, _ in files:
        target = os.path.join(dest, rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        try:
            os.link(full, target)
        except OSError:
            shutil.copy2(full, target)
    with open(os.path.join(dest, "README.md"), "w", encoding="utf-8") as f:
        f.write(readme)


def files_txt(repo: str, repo_type: str, files, readme: str) -> str:
    rows = [(len(readme.encode()), "README.md")] + [(size, rel) for _, rel, size in files]
    total = sum(size for size, _ in rows)
    return (f"# {repo_type} {repo}: {len(rows)} files, {total} bytes\n"
            + "".join(f"{size}\t{rel}\n" for size, rel in rows))


def publish(project: str, repos: dict[str, str], keys, *, private: bool, dry_run: bool, out: str,
            base_model: str | None, token: str | None) -> list[str]:
    """Publish the artifacts named in `keys`; returns one line per repository, for the user."""
    chosen = [a for a in ARTIFACTS if a.key in keys]
    if not dry_run and not token:
        raise HumpbackError("HF_TOKEN is not set: export a Hub token with write access, or use --dry-run")
    # Check every artifact before writing or uploading anything.
    prepared = [(a, artifact_files(project, a)) for a in chosen]
    prepared = [(a, files, card(project, a, repos, base_model)) for a, files in prepared]
    report = []
    if dry_run:
        for a, files, readme in prepared:
            folder = os.path.join(out, a.key)
            os.makedirs(folder, exist_ok=True)
            with open(os.path.join(folder, "README.md"), "w", encoding="utf-8") as f:
                f.write(readme)
            with open(os.path.join(folder, "files.txt"), "w", encoding="utf-8") as f:
                f.write(files_txt(repos[a.key], a.repo_type, files, readme))
            report.append(f"{a.repo_type} {repos[a.key]}: dry run, card and file list in {folder}/")
        return report

    from huggingface_hub import HfApi
    from huggingface_hub.errors import HTTPError

    api = HfApi(token=token)
    rev, dirty = git_revision(project)
    for a, files, readme in prepared:
        repo = repos[a.key]
        try:
            url = api.create_repo(repo, repo_type=a.repo_type, private=private, exist_ok=True)
            with tempfile.TemporaryDirectory(prefix="humpback-publish-") as tmp:
                stage_folder(tmp, files, readme)
                api.upload_folder(repo_id=repo, repo_type=a.repo_type, folder_path=tmp,
                                  commit_message=f"humpback {a.key} at {rev[:12]}{' (dirty)' if dirty else ''}")
        # HTTPError: httpx's base class, HTTP status and connection errors alike; ValueError: the Hub
        # rejected the card's metadata.
        except (HTTPError, ValueError) as e:
            raise HumpbackError(f"{repo}: upload failed: {'; '.join(str(e).split(chr(10)))}") from None
        report.append(f"{a.repo_type} {repo}: {len(files) + 1} files uploaded, {url}")
    return report


def main(args) -> None:
    keys = args.only or ["backward", "final", "curated"]
    repos = repo_ids(args.namespace, {"backward": args.backward_repo, "final": args.final_repo,
                                      "curated": args.dataset_repo}, keys)
    for line in publish(args.project, repos, keys, private=args.private, dry_run=args.dry_run,
                        out=os.path.join(args.project, args.out), base_model=args.base_model,
                        token=os.environ.get("HF_TOKEN")):
        print(line)
