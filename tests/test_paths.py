"""humpback/paths.py and dvc.yaml name the same pipeline files: a path changed in one place only fails here."""

import os

import yaml

from humpback import paths

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PIPELINE_DIRS = ("data/", "models/", "metrics/", "plots/", "reports/", "dvclive/")
INPUTS = ("data/raw", "data/rater_check/")  # the bundled inputs: params.yaml names them (data.*, curation.check_pairs)


def dvc_yaml_paths() -> set[str]:
    with open(os.path.join(ROOT, "dvc.yaml"), encoding="utf-8") as f:
        stages = yaml.safe_load(f)["stages"]
    found = set()
    for stage in stages.values():
        for entry in [*stage.get("deps", []), *stage.get("outs", [])]:
            path = entry if isinstance(entry, str) else next(iter(entry))
            if path.startswith(PIPELINE_DIRS) and not path.startswith(INPUTS):
                found.add(path.rstrip("/"))
    return found


def paths_module_paths() -> set[str]:
    found = {v for k, v in vars(paths).items() if k.isupper() and isinstance(v, str)}
    for rnd in paths.ROUNDS.values():
        found |= {rnd.rated, rnd.curated, rnd.model, rnd.live, rnd.curate_metrics, rnd.finetune_metrics}
    stages = yaml.safe_load(open(os.path.join(ROOT, "dvc.yaml"), encoding="utf-8"))["stages"]
    found |= {paths.metrics(s) for s in stages if s != "report"}
    found |= {paths.live(s) for s in ("inverse_sft", "seed_sft")}
    return found


def test_every_path_in_dvc_yaml_is_in_paths_py():
    missing = dvc_yaml_paths() - paths_module_paths()
    assert not missing, f"dvc.yaml names {sorted(missing)}, which humpback/paths.py does not"


def test_every_path_in_paths_py_is_in_dvc_yaml():
    missing = paths_module_paths() - dvc_yaml_paths()
    assert not missing, f"humpback/paths.py names {sorted(missing)}, which no stage in dvc.yaml reads or writes"
