"""Model loading: local directories, GGUF inside a PyPI package, 4-bit (QLoRA), the Hub path offline."""

import importlib.util
import os

import pytest
import torch

import tiny
from humpback import HumpbackError, models
from humpback.config import ModelParams, TrainParams
from humpback.training import train_lora

DEFAULT = ModelParams().base


def test_unknown_package_is_a_clear_error():
    with pytest.raises(HumpbackError, match="package 'no-such-dist' is not installed"):
        models.resolve("pkg://no-such-dist/x.gguf")


def test_missing_local_model_is_a_clear_error(tmp_path):
    with pytest.raises(HumpbackError, match="cannot load"):
        models.load_tokenizer(str(tmp_path / "nothing-here"))


def test_fingerprint_changes_with_the_weights(tmp_path, repo_root):
    a = tiny.build_model(str(tmp_path / "a"), repo_root, seed=0)
    b = tiny.build_model(str(tmp_path / "b"), repo_root, seed=1)
    assert models.fingerprint(a) != models.fingerprint(b)
    assert models.fingerprint(a) == models.fingerprint(a)


@pytest.fixture(scope="module")
def tiny64(tmp_path_factory, repo_root):
    # bitsandbytes quantizes in blocks of 64 values: give the layers at least that width.
    return tiny.build_model(str(tmp_path_factory.mktemp("tiny64")), repo_root, hidden=64)


def test_4bit_loads_nf4_and_generates(tiny64):
    import bitsandbytes as bnb

    model = models.load_model(tiny64, load_in_4bit=True)
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    tok = models.load_tokenizer(tiny64)
    out = model.generate(**tok(["Hello there"], return_tensors="pt"), max_new_tokens=4, do_sample=False,
                         pad_token_id=tok.pad_token_id)
    assert out.shape[1] > 2


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_4bit_config_is_qloras_as_trl_builds_it(dtype):
    """nf4, double quantization, compute in model.dtype: the same BitsAndBytesConfig as trl's model args give."""
    from transformers import BitsAndBytesConfig
    from trl import ModelConfig, get_quantization_config

    ours = BitsAndBytesConfig(**models.QLORA_4BIT, bnb_4bit_compute_dtype=getattr(torch, dtype))
    trls = get_quantization_config(ModelConfig(load_in_4bit=True, dtype=dtype, use_bnb_nested_quant=True))
    assert ours.to_dict() == trls.to_dict()
    assert ours.bnb_4bit_quant_type == "nf4" and ours.bnb_4bit_use_double_quant
    assert ours.bnb_4bit_compute_dtype == getattr(torch, dtype)


def test_qlora_training_step_on_cpu(tiny64, tmp_path):
    params = TrainParams(max_steps=2, per_device_train_batch_size=2, max_length=64, logging_steps=1,
                         eval_steps=1, lora_r=4, lora_alpha=8)
    data = [{"prompt": f"Question {i}: what is {i} plus {i}?\n", "completion": f"{2 * i}"} for i in range(6)]
    out = str(tmp_path / "adapter")
    metrics = train_lora(ModelParams(base=tiny64, load_in_4bit=True), params, data[2:], data[:2], out,
                         str(tmp_path / "live"))
    assert metrics["steps"] == 2 and metrics["train_loss"] > 0 and metrics["eval_loss"] > 0
    assert os.path.exists(os.path.join(out, "adapter_model.safetensors"))
    assert os.path.exists(tmp_path / "live" / "plots" / "metrics" / "train" / "loss.tsv")
    # The adapter loads back onto the 4-bit base.
    model = models.load_model(tiny64, load_in_4bit=True, adapter=out)
    assert any("lora_A" in n for n, _ in model.named_parameters())


def test_hub_dataset_path_reads_a_local_repo_in_hub_layout(tmp_path, repo_root):
    """`datasets.load_dataset(repo_id)` with a local folder laid out like the Hub repository."""
    from humpback import formats

    hub = tmp_path / "GAIR-lima"
    hub.mkdir()
    (hub / "train.jsonl").write_text(open(f"{repo_root}/data/raw/lima.jsonl").read())
    report = formats.ParseReport()
    pairs = formats.parse_lima(formats.hub_records(str(hub), "data.lima_hub"), report)
    assert report.read == 285 and len(pairs) == report.kept > 200


def test_hub_unreachable_is_a_clear_error(monkeypatch):
    from humpback import formats

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HumpbackError, match="cannot load Hub dataset 'GAIR/lima'"):
        next(formats.hub_records("GAIR/lima", "data.lima_hub"))


@pytest.mark.slow
def test_real_default_model_generates_text():
    """SmolLM2-135M-Instruct from its GGUF package, materialized as safetensors, writes English."""
    tok = models.load_tokenizer(DEFAULT)
    model = models.load_model(DEFAULT)
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=20, do_sample=False)
    text = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in text
    assert os.path.exists(os.path.join(models.resolve(DEFAULT), "model.safetensors"))


def test_reference_gpu_profile_is_valid_and_uses_qlora(repo_root):
    from humpback.config import load_params

    p = load_params(f"{repo_root}/profiles/llama2-7b-qlora.yaml")
    assert p.model.load_in_4bit and p.model.base == "meta-llama/Llama-2-7b-hf"
    assert p.curation.rater == "self" and p.curation.iterations == 2 and p.data.source == "hub"
    assert p.evaluate.judge == "meta-llama/Llama-2-7b-chat-hf" and p.finetune.tags and p.finetune.mix_seed
    assert p.launch.engine == "vllm" and p.launch.config == "profiles/accelerate/ddp.yaml"
    # every key of the default params.yaml is there: dvc.yaml's params deps must all resolve
    import yaml

    default = yaml.safe_load(open(f"{repo_root}/params.yaml"))
    profile = yaml.safe_load(open(f"{repo_root}/profiles/llama2-7b-qlora.yaml"))
    assert {s: sorted(v) for s, v in profile.items()} == {s: sorted(v) for s, v in default.items()}


def test_unknown_param_is_a_one_line_error(tmp_path):
    from humpback.config import load_params

    (tmp_path / "params.yaml").write_text("curation:\n  treshold: 4\n")
    with pytest.raises(HumpbackError, match=r"params.yaml.curation: unknown key\(s\) treshold"):
        load_params(str(tmp_path / "params.yaml"))


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_engine_vllm_without_vllm_is_a_one_line_error(tiny_model):
    from humpback.config import ModelParams
    from humpback.engine import open_engine

    with pytest.raises(HumpbackError, match="engine: vllm needs vLLM: run scripts/setup-vllm"):
        open_engine(tiny_model, ModelParams(base=tiny_model, dtype="float32"), 4, engine="vllm")
