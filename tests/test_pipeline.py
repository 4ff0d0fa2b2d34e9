"""The real `dvc repro`, end to end, on tiny random models in a temporary copy of the project."""

import json
import os

import pytest
import yaml

import tiny

STAGES = ["prepare", "inverse_sft", "self_augment", "rater_check", "rate", "curate", "finetune", "evaluate", "report"]


def load(ws, rel):
    with open(os.path.join(ws, rel), encoding="utf-8") as f:
        return json.load(f)


def set_param(ws, key, value):
    path = os.path.join(ws, "params.yaml")
    with open(path) as f:
        params = yaml.safe_load(f)
    section, name = key.split(".")
    params[section][name] = value
    with open(path, "w") as f:
        yaml.safe_dump(params, f, sort_keys=False)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, repo_root, tiny_model):
    ws = tiny.make_workspace(str(tmp_path_factory.mktemp("ws")), repo_root, tiny_model)
    proc = tiny.run(["dvc", "repro"], ws)
    assert tiny.ran_stages(proc.stdout) == STAGES
    return ws


def test_every_output_has_its_schema_and_counts(workspace):
    ws = workspace
    prep = load(ws, "metrics/prepare.json")
    for corpus in ("guanaco", "lima"):
        m = prep[corpus]
        assert m["read"] == m["kept"] + m["dropped"] == m["kept"] + sum(m["dropped_by_reason"].values())
    seed = load(ws, "data/guanaco_inverse.json")
    assert len(seed) == prep["guanaco"]["kept"] and set(seed[0]) == {"id", "instruction", "response"}
    unlabelled, heldout = load(ws, "data/lima_single_turn.json"), load(ws, "data/lima_heldout.json")
    assert len(unlabelled) + len(heldout) == prep["lima"]["kept"] and len(heldout) == 8
    assert not {r["id"] for r in unlabelled} & {r["id"] for r in heldout}
    inv = load(ws, "metrics/inverse_sft.json")  # responses are cut by tokens: no seed example is lost
    assert inv["dropped_too_long"] == 0 and inv["train_examples"] + inv["eval_examples"] == len(seed)
    check = load(ws, "metrics/rater_check.json")
    assert {"spearman", "auc_high_vs_low", "auc_offtopic", "mean_by_level", "precision_at_4"} <= set(check)
    assert check["pairs"] == 120 and check["offtopic_pairs"] == 24

    aug = load(ws, "data/self_augmented.json")
    assert len(aug) == 12
    assert set(aug[0]) == {"id", "instruction", "response", "source", "decoding"}
    assert aug[0]["decoding"] == {"max_new_tokens": 8, "do_sample": False}
    by_id = {r["id"]: r for r in unlabelled}
    assert all(a["response"] == by_id[a["id"]]["response"] for a in aug)  # never a held-out pair

    rated = load(ws, "data/curated_dataset_all_evaluated.json")
    assert [r["id"] for r in rated] == [a["id"] for a in aug]
    assert all({"score", "rater_output", "reasoning"} <= set(r) for r in rated)
    assert all(r["score"] is None or 1 <= r["score"] <= 5 for r in rated)
    rate = load(ws, "metrics/rate.json")
    assert rate["rated"] == 12 == rate["scored"] + rate["unparsable"]
    assert sum(h["count"] for h in load(ws, "plots/score_histogram.json")) == 12

    curated = load(ws, "data/curated_dataset.json")
    assert len(curated) == load(ws, "metrics/curate.json")["kept"] == sum(r["score"] >= 1 for r in rated)
    assert load(ws, "metrics/finetune.json")["train_examples"] == len(curated)

    for d in ("models/backward", "models/final"):
        assert os.path.exists(os.path.join(ws, d, "adapter_model.safetensors"))
        assert os.path.exists(os.path.join(ws, d, "tokenizer.json"))
    for run in ("inverse_sft", "finetune"):
        assert os.path.exists(os.path.join(ws, f"dvclive/{run}/plots/metrics/train/loss.tsv"))
    ev = load(ws, "metrics/evaluate.json")
    assert ev["heldout_pairs"] == 8
    assert ev["base"]["nll"] > 0 and ev["final"]["nll"] > 0
    assert ev["nll_delta"] == pytest.approx(ev["final"]["nll"] - ev["base"]["nll"], abs=1e-3)


def test_threshold_change_reruns_only_curation_and_after(workspace):
    ws = workspace
    scores = sorted(r["score"] for r in load(ws, "data/curated_dataset_all_evaluated.json"))
    threshold = scores[len(scores) // 2]  # the median: keeps about half, a different set than before
    set_param(ws, "curation.threshold", threshold)
    proc = tiny.run(["dvc", "repro"], ws)
    assert tiny.ran_stages(proc.stdout) == ["curate", "finetune", "evaluate", "report"]
    assert load(ws, "metrics/curate.json")["kept"] == sum(s >= threshold for s in scores) < len(scores)
    assert tiny.run(["dvc", "status"], ws).stdout.strip() == "Data and pipelines are up to date."


def test_empty_curated_set_fails_with_a_clear_message(workspace):
    ws = workspace
    set_param(ws, "curation.threshold", 6)
    proc = tiny.run(["dvc", "repro"], ws, check=False)
    assert proc.returncode != 0
    assert "error: data/curated_dataset.json has 0 pairs at curation.threshold=6" in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr + proc.stdout
