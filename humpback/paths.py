"""Every file and directory the pipeline reads or writes, relative to the project root, written once.

`dvc.yaml` names the same paths as deps and outs; tests/test_paths.py keeps the two in sync."""

from __future__ import annotations

from dataclasses import dataclass

# prepare
SEED_PAIRS = "data/guanaco_inverse.json"  # the seed pairs (instruction, response): inverse SFT, M0, seed mix
UNLABELLED = "data/lima_single_turn.json"  # single-turn LIMA responses to backtranslate
HELDOUT = "data/lima_heldout.json"  # never augmented: finetune's eval loss and evaluate
# inverse_sft, self_augment, filter
BACKWARD_MODEL = "models/backward"
AUGMENTED = "data/self_augmented.json"
FILTERED = "data/self_augmented_filtered.json"
# seed_sft, rater_check, rate
SEED_MODEL = "models/seed"  # M0
RATER = "models/rater"  # the fitted scoring
RATER_CHECK_SCORED = "data/rater_check_scored.json"
SCORE_HISTOGRAM = "plots/score_histogram.json"
# baselines, evaluate, report
IFEVAL = "data/eval/ifeval.jsonl"  # verifiable instructions (humpback.evaluation.ifeval)
IFEVAL_ANSWERS = "data/ifeval_answers.json"  # each model's answer to each, and which instructions it followed
IFEVAL_BY_TYPE = "plots/ifeval_by_type.json"  # instruction-level accuracy per constraint type and model
BASELINES = "data/baselines.json"  # base and seed-only measurements that evaluate compares with
EVAL_SAMPLES = "data/eval_samples.json"
REPORT = "reports/curation.html"


def metrics(stage: str) -> str:
    return f"metrics/{stage}.json"


def live(stage: str) -> str:
    """The stage's DVCLive directory (training stages)."""
    return f"dvclive/{stage}"


@dataclass(frozen=True)
class Round:
    """The files of one self-curation round. `final` is the last round, whatever curation.iterations is."""

    name: str
    rated: str
    curated: str
    model: str
    live: str
    curate_metrics: str
    finetune_metrics: str


ROUNDS = {
    "round1": Round("round1", "data/rated_round1.json", "data/curated_round1.json", "models/round1",
                    live("finetune_round1"), metrics("curate_round1"), metrics("finetune_round1")),
    "final": Round("final", "data/curated_dataset_all_evaluated.json", "data/curated_dataset.json", "models/final",
                   live("finetune"), metrics("curate"), metrics("finetune")),
}
FINAL = ROUNDS["final"]
