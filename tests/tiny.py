"""Tiny random models in Hugging Face format, built locally in seconds, for fast real runs."""

from __future__ import annotations

import glob
import json
import os

# The stages of dvc.yaml in the order `dvc repro` runs them, and those a threshold change reruns
# (with curation.iterations: 1, finetune_round1 reruns but writes the same "not trained" out, so rerate
# does not; with 2, M1 changes and rerate follows).
STAGES = ["prepare", "inverse_sft", "self_augment", "filter", "seed_sft", "rater_check", "rate", "curate_round1",
          "finetune_round1", "rerate", "curate", "finetune", "baselines", "evaluate", "report"]
AFTER_RATE = ["curate_round1", "finetune_round1", "curate", "finetune", "evaluate", "report"]
AFTER_RATE_ITERATED = ["curate_round1", "finetune_round1", "rerate", "curate", "finetune", "evaluate", "report"]

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def corpus_lines(repo: str) -> list[str]:
    lines = []
    for path in glob.glob(os.path.join(repo, "data", "raw", "*.jsonl")):
        with open(path, encoding="utf-8") as f:
            lines.extend(json.dumps(json.loads(line)) for line in f if line.strip())
    return lines


def build_tokenizer(out_dir: str, texts: list[str], vocab_size: int = 600, chat: bool = True):
    """A byte-level BPE tokenizer trained on `texts`, with ChatML special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    # Digits stand alone, as in the Llama and SmolLM2 tokenizers, so "Score: 4" ends in the token "4".
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    if chat:
        fast.chat_template = CHATML
    fast.save_pretrained(out_dir)
    return fast


def build_model(out_dir: str, repo: str, seed: int = 0, hidden: int = 32, layers: int = 2, chat: bool = True) -> str:
    """Save a random tiny Llama (the architecture of the default model) with its tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_tokenizer(out_dir, corpus_lines(repo), chat=chat)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        initializer_range=0.3,  # wide weights: a random model that writes varied tokens, not one token forever
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(out_dir, safe_serialization=True)
    return out_dir


TINY_PARAMS = {
    "data": {"heldout_size": 8},
    "inverse_sft": {"max_steps": 2, "per_device_train_batch_size": 2, "max_length": 256, "max_response_tokens": 32,
                    "eval_size": 4, "logging_steps": 1, "eval_steps": 1, "lora_r": 4, "lora_alpha": 8},
    "augment": {"num_samples": 12, "batch_size": 4, "max_new_tokens": 8},
    # expected: the probe fit on a random model rates everything alike; the tests need varied ratings
    "curation": {"batch_size": 4, "threshold": 1, "max_new_tokens": 8, "scoring": "expected", "iterations": 1},
    "filter": {"min_words": 1},  # a random model's instructions: keep them unless duplicated or copied
    "seed_sft": {"max_steps": 2, "per_device_train_batch_size": 2, "max_length": 128, "eval_size": 4,
                 "logging_steps": 1, "eval_steps": 1, "lora_r": 4, "lora_alpha": 8},
    # one round without seed mix: the quickest; tests/test_pipeline.py's full_recipe turns every part on
    "finetune": {"mix_seed": False, "max_steps": 2, "per_device_train_batch_size": 2, "max_length": 256, "eval_size": 4,
                 "logging_steps": 1, "eval_steps": 1, "lora_r": 4, "lora_alpha": 8},
    "evaluate": {"batch_size": 4, "max_length": 128, "judged": 4, "max_new_tokens": 8, "gap_tokens": 8,
                 "ifeval_prompts": 6, "ifeval_max_new_tokens": 8, "bootstrap_resamples": 1000},
}


def tiny_params(repo: str, model_dir: str, **overrides) -> dict:
    """The default params.yaml with tiny models and tiny sizes: the whole pipeline in about a minute."""
    import yaml

    with open(os.path.join(repo, "params.yaml")) as f:
        params = yaml.safe_load(f)
    params["model"]["base"] = model_dir
    params["curation"]["rater"] = model_dir
    for section, values in TINY_PARAMS.items():
        params[section].update(values)
    for key, value in overrides.items():
        section, name = key.split(".")
        params[section][name] = value
    return params


def set_params(ws: str, **values) -> None:
    """Change keys of a workspace's params.yaml: set_params(ws, **{"curation.threshold": 3})."""
    import yaml

    path = os.path.join(ws, "params.yaml")
    with open(path) as f:
        params = yaml.safe_load(f)
    for key, value in values.items():
        section, name = key.split(".")
        params[section][name] = value
    with open(path, "w") as f:
        yaml.safe_dump(params, f, sort_keys=False)


def run(cmd: list[str], cwd: str, check: bool = True, env: dict | None = None):
    import subprocess

    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


BACKTRANSLATED = "data/rater_check/backtranslated.jsonl"


def balance_backtranslated(path: str, per_rating: int = 3) -> None:
    """Keep `per_rating` labelled pairs of each rating in each part. The rater's cut points follow the dev
    part's labels: balanced, they spread the tiny rater's ratings over the five levels, which the
    threshold tests sweep (the real set is mostly 1s); and the tiny run scores 30 pairs, not 512."""
    import json

    with open(path, encoding="utf-8") as f:
        pairs = [json.loads(line) for line in f if line.strip()]
    kept = []
    for part in ("dev", "test"):
        for rating in range(1, 6):
            kept += [p for p in pairs if p["split"] == part and p["rating"] == rating][:per_rating]
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(p) + "\n" for p in kept)


def make_workspace(dest: str, repo: str, model_dir: str, **overrides) -> str:
    """A fresh git+DVC copy of the tracked project files with the tiny profile, committed."""
    import shutil
    import subprocess

    import yaml

    files = subprocess.run(["git", "ls-files"], cwd=repo, capture_output=True, text=True, check=True).stdout.split()
    for rel in files:
        if rel == "dvc.lock" or not os.path.exists(os.path.join(repo, rel)):
            continue  # the lock of the default profile does not describe this workspace
        os.makedirs(os.path.dirname(os.path.join(dest, rel)) or dest, exist_ok=True)
        shutil.copy2(os.path.join(repo, rel), os.path.join(dest, rel))
    for rel in ("dvclive", "metrics", "plots"):  # outs of the default run, rebuilt here
        shutil.rmtree(os.path.join(dest, rel), ignore_errors=True)
    balance_backtranslated(os.path.join(dest, BACKTRANSLATED))
    with open(os.path.join(dest, "params.yaml"), "w") as f:
        yaml.safe_dump(tiny_params(repo, model_dir, **overrides), f, sort_keys=False)
    run(["git", "init", "-q"], dest)
    run(["git", "add", "-A"], dest)
    run(["git", "commit", "-qm", "tiny workspace"], dest)
    return dest


def copy_workspace(src: str, dest: str) -> str:
    """A copy of a workspace to work on (git, the DVC cache and every out included), e.g. of conftest's
    tiny_run, which every module that starts from a reproduced tiny pipeline shares. Not .dvc/tmp (DVC's
    locks, the queue): DVC makes its own in the copy."""
    import shutil

    dvc_dir = os.path.join(os.path.abspath(src), ".dvc")
    shutil.copytree(src, dest, symlinks=True, dirs_exist_ok=True,
                    ignore=lambda d, names: ["tmp"] if os.path.abspath(d) == dvc_dir else [])
    return dest


def ran_stages(output: str) -> list[str]:
    import re

    return re.findall(r"Running stage '([\w-]+)'", output)
