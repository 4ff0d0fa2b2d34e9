"""Same inputs, same hashes: on another clone, at another path, with another model cache."""

import glob
import os

import pytest
import yaml

import tiny
from humpback import models
from humpback.config import ModelParams, TrainParams
from humpback.training import train_lora


def out_hashes(ws: str) -> dict:
    with open(os.path.join(ws, "dvc.lock")) as f:
        lock = yaml.safe_load(f)
    return {(stage, o["path"]): o.get("md5") for stage, body in lock["stages"].items() for o in body.get("outs", [])}


def test_two_clones_with_two_caches_give_identical_out_hashes(tmp_path_factory, repo_root, tiny_model, tiny_run):
    # Clone a: conftest's tiny_run, a fresh workspace reproduced with a fresh cache of its own (every stage
    # ran; the modules that start from it work on copies). Clone b: another path, another fresh cache.
    roots = [tiny_run]
    ws = tiny.make_workspace(str(tmp_path_factory.mktemp("clone-b") / "nested" / "project"), repo_root, tiny_model)
    cache = str(tmp_path_factory.mktemp("clone-b-model-cache"))
    tiny.run(["dvc", "repro", "-f"], ws, env={"HUMPBACK_CACHE_DIR": cache})
    roots.append((ws, cache))
    hashes = [out_hashes(ws) for ws, _ in roots]
    assert len(hashes[0]) >= 15 and all(hashes[0].values())
    assert hashes[0] == hashes[1]
    # no out names the clone or the cache it was made in
    for ws, cache in roots:
        for path in glob.glob(os.path.join(ws, "data", "*.json")) + glob.glob(os.path.join(ws, "models", "**", "*"),
                                                                                recursive=True):
            if os.path.isfile(path) and not path.endswith(".safetensors"):
                text = open(path, encoding="utf-8", errors="replace").read()
                assert ws not in text and cache not in text, path


@pytest.mark.slow
def test_adapter_names_its_base_by_reference_not_by_cache_path(tmp_path):
    """The default model lives in the cache as safetensors; its adapter must not say where."""
    ref = ModelParams().base
    local = models.resolve(ref)
    params = TrainParams(max_steps=1, per_device_train_batch_size=2, max_length=48, logging_steps=1, eval_steps=1,
                         lora_r=2, lora_alpha=4)
    data = [{"prompt": f"Say {i}.\n", "completion": f"{i}"} for i in range(4)]
    out = str(tmp_path / "adapter")
    train_lora(ModelParams(base=ref), params, data, [], out, str(tmp_path / "live"))
    import json

    with open(os.path.join(out, "adapter_config.json")) as f:
        assert json.load(f)["base_model_name_or_path"] == ref
    for name in os.listdir(out):
        if not name.endswith(".safetensors"):
            assert local not in open(os.path.join(out, name), encoding="utf-8").read(), name
