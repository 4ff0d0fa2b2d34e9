"""The real `dvc repro`, end to end, on tiny random models in a temporary copy of the project."""

import json
import os

import pytest

import tiny

STAGES = tiny.STAGES


def load(ws, rel):
    with open(os.path.join(ws, rel), encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_run):
    """A copy of conftest's tiny_run: the whole tiny pipeline after `dvc repro`, every stage run."""
    return tiny.copy_workspace(tiny_run[0], str(tmp_path_factory.mktemp("ws")))


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
    check = load(ws, "metrics/rater_check.json")["constructed"]
    headline = {"spearman", "auc_fit", "precision_at_4", "recall_at_4", "precision_at_5"}
    assert headline | {"auc_high_vs_low", "mean_by_level"} <= set(check)
    assert check["pairs"] == 120 and check["offtopic_pairs"] == 24
    real = load(ws, "metrics/rater_check.json")["backtranslated"]  # the test part of the hand-labelled pairs
    from humpback.curation.backtranslated import load_backtranslated

    test_part = [p for p in load_backtranslated(os.path.join(ws, "data/rater_check/backtranslated.jsonl"))
                 if p["split"] == "test"]
    assert headline <= set(real) and real["pairs"] == len(test_part) >= 10  # tiny.balance_backtranslated
    assert real["fit"] == sum(p["fits"] for p in test_part) and real["kept_at_5"] <= real["kept_at_4"] <= len(test_part)

    aug = load(ws, "data/self_augmented.json")
    assert len(aug) == 12
    assert set(aug[0]) == {"id", "instruction", "response", "source", "decoding"}
    assert aug[0]["decoding"] == {"max_new_tokens": 8, "do_sample": False}
    by_id = {r["id"]: r for r in unlabelled}
    assert all(a["response"] == by_id[a["id"]]["response"] for a in aug)  # never a held-out pair

    filtered, counts = load(ws, "data/self_augmented_filtered.json"), load(ws, "metrics/filter.json")
    assert counts["generated"] == 12 == counts["kept"] + sum(counts["dropped"].values())
    assert counts["kept"] == len(filtered) and {a["id"] for a in filtered} <= {a["id"] for a in aug}
    rated = load(ws, "data/curated_dataset_all_evaluated.json")
    assert rated == load(ws, "data/rated_round1.json")  # curation.iterations: 1
    assert [r["id"] for r in rated] == [a["id"] for a in filtered]
    assert all({"score", "rater_output", "reasoning"} <= set(r) for r in rated)
    assert all(r["score"] is None or 1 <= r["score"] <= 5 for r in rated)
    rate = load(ws, "metrics/rate.json")
    assert rate["rated"] == len(filtered) == rate["scored"] + rate["unparsable"]
    assert sum(h["count"] for h in load(ws, "plots/score_histogram.json")) == len(filtered)

    curated = load(ws, "data/curated_dataset.json")
    assert len(curated) == load(ws, "metrics/curate.json")["kept"] == sum(r["score"] >= 1 for r in rated)
    assert load(ws, "metrics/finetune.json")["train_examples"] == len(curated)

    for d in ("models/backward", "models/final"):
        assert os.path.exists(os.path.join(ws, d, "adapter_model.safetensors"))
        assert os.path.exists(os.path.join(ws, d, "tokenizer.json"))
    for run in ("inverse_sft", "finetune"):
        assert os.path.exists(os.path.join(ws, f"dvclive/{run}/plots/metrics/train/loss.tsv"))
    for d in ("models/seed", "models/round1"):  # rater: a reference, iterations: 1
        assert os.listdir(os.path.join(ws, d)) == ["SKIPPED.md"]
    ev = load(ws, "metrics/evaluate.json")
    (base,) = load(ws, "data/baselines.json")  # measured once, compared by evaluate; no M0 here
    assert base["model"] == "base" and load(ws, "metrics/baselines.json")["models"] == ["base"]
    assert [len(base[k]) for k in ("losses", "gap", "ifeval", "judged", "judged_scores")] == [8, 8, 6, 4, 4]
    samples = load(ws, "data/eval_samples.json")
    assert [s["score_base"] for s in samples] == base["judged_scores"]
    assert [s["base"] for s in samples] == base["judged"]
    assert ev["judged"] == len(samples) == 4
    assert ev["win_rate"] + ev["tie_rate"] + ev["loss_rate"] == pytest.approx(1)
    assert [s["instruction"] for s in samples] == [x["instruction"] for x in load(ws, "data/lima_heldout.json")[:4]]
    assert all(s["verdict"] in ("win", "tie", "loss") and s["base"] is not None for s in samples)
    assert ev["heldout_pairs"] == 8
    # model.dtype: auto is recorded as what it resolved to, in every stage that ran a model, and beside the adapters
    from humpback.models import resolve_dtype

    dtype = resolve_dtype("auto")  # the tiny workspace keeps the default params.yaml's model.dtype
    for rel in ("inverse_sft", "self_augment", "rater_check", "rate", "finetune", "baselines", "evaluate"):
        assert load(ws, f"metrics/{rel}.json")["dtype"] == dtype, rel
    for d in ("models/backward", "models/final"):
        assert load(ws, f"{d}/humpback.json")["dtype"] == dtype
    assert ev["base"]["nll"] > 0 and ev["final"]["nll"] > 0
    assert ev["nll_delta"] == pytest.approx(ev["final"]["nll"] - ev["base"]["nll"], abs=1e-3)
    # every comparison carries its interval; seed-only is absent where M0 is not trained (rater: a reference)
    for name in ("nll_delta", "gap_delta", "win_rate"):
        assert ev[f"{name}_ci"]["lo"] <= ev[name] <= ev[f"{name}_ci"]["hi"], name
    assert ev["gap_delta"] == pytest.approx(ev["final"]["gap"] - ev["base"]["gap"], abs=1e-3)
    ifeval = ev["ifeval"]
    assert ifeval["prompts"] == 6 and set(ifeval) >= {"base", "final", "final_vs_base"} and "seed" not in ifeval
    for name in ("base", "final"):
        acc = ifeval[name]["prompt_level_accuracy"]
        assert 0 <= acc <= 1 and ifeval[name]["prompt_level_accuracy_ci"]["lo"] <= acc
    answers = load(ws, "data/ifeval_answers.json")
    assert len(answers) == 6 and all(isinstance(a["final"]["answer"], str) for a in answers)
    by_type = load(ws, "plots/ifeval_by_type.json")
    assert sum(r["n"] for r in by_type) == ifeval["instructions"]


def test_threshold_change_reruns_only_curation_and_after(workspace):
    ws = workspace
    scores = sorted(r["score"] for r in load(ws, "data/curated_dataset_all_evaluated.json"))
    distinct = sorted(set(scores))
    threshold = distinct[len(distinct) // 2]  # a middle score: above the tiny profile's 1, keeps part
    tiny.set_params(ws, **{"curation.threshold": threshold})
    proc = tiny.run(["dvc", "repro"], ws)
    assert tiny.ran_stages(proc.stdout) == tiny.AFTER_RATE
    assert load(ws, "metrics/curate.json")["kept"] == sum(s >= threshold for s in scores) < len(scores)
    assert tiny.run(["dvc", "status"], ws).stdout.strip() == "Data and pipelines are up to date."


def test_empty_curated_set_fails_with_a_clear_message(workspace):
    ws = workspace
    tiny.set_params(ws, **{"curation.threshold": 6})
    proc = tiny.run(["dvc", "repro"], ws, check=False)
    assert proc.returncode != 0
    assert "error: data/curated_dataset.json has 0 pairs at curation.threshold=6" in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr + proc.stdout


@pytest.fixture(scope="module")
def full_recipe(tmp_path_factory, repo_root, tiny_model):
    """Every part of the recipe on: M0 rates, two iterations, seed mix with tags."""
    ws = tiny.make_workspace(str(tmp_path_factory.mktemp("ws-full")), repo_root, tiny_model, **{
        "curation.rater": "self", "curation.iterations": 2, "finetune.mix_seed": True, "finetune.tags": True,
        "finetune.seed_pairs": 4})
    proc = tiny.run(["dvc", "repro"], ws)
    assert tiny.ran_stages(proc.stdout) == tiny.STAGES
    return ws


def test_full_recipe_trains_m0_and_m1_and_rates_twice(full_recipe):
    ws = full_recipe
    for d in ("models/seed", "models/round1", "models/final"):
        assert os.path.exists(os.path.join(ws, d, "adapter_model.safetensors")), d
    assert load(ws, "metrics/seed_sft.json")["trained"] and load(ws, "metrics/finetune_round1.json")["trained"]
    assert load(ws, "metrics/rater_check.json")["rater"] == "self"
    rerate = load(ws, "metrics/rerate.json")
    assert rerate["iterations"] == 2 and rerate["rater_check"]["constructed"]["pairs"] > 0
    assert rerate["rater_check"]["backtranslated"]["pairs"] > 0
    filtered = load(ws, "data/self_augmented_filtered.json")
    assert [r["id"] for r in load(ws, "data/curated_dataset_all_evaluated.json")] == [r["id"] for r in filtered]
    # the round-2 ratings come from M1, not copied from round 1's: M1's probe/expected scores differ
    round1 = load(ws, "data/rated_round1.json")
    final = load(ws, "data/curated_dataset_all_evaluated.json")
    assert [r["probabilities"] for r in round1] != [r["probabilities"] for r in final]
    ft = load(ws, "metrics/finetune.json")
    assert ft["seed_pairs"] == 4 and ft["train_examples"] == ft["curated_pairs"] + 4
    assert ft["curated_pairs"] == len(load(ws, "data/curated_dataset.json"))


def test_threshold_change_with_iterations_reruns_only_after_the_ratings(full_recipe):
    ws = full_recipe
    distinct = sorted({r["score"] for r in load(ws, "data/rated_round1.json")})
    tiny.set_params(ws, **{"curation.threshold": distinct[len(distinct) // 2]})
    proc = tiny.run(["dvc", "repro"], ws)
    assert tiny.ran_stages(proc.stdout) == tiny.AFTER_RATE_ITERATED
    for stage in ("filter", "seed_sft", "rater_check", "rate"):
        assert f"Stage '{stage}' didn't change, skipping" in proc.stdout
    assert tiny.run(["dvc", "status"], ws).stdout.strip() == "Data and pipelines are up to date."
