"""model.dtype: auto resolves to bf16 only where the device computes it natively (issue 18, part 1).

The CPU flags and the CUDA device are faked: they are what cannot be chosen on the test machine."""

import json
import os

import pytest
import torch

from humpback import HumpbackError, models
from humpback.config import ModelParams, TrainParams
from humpback.training import ADAPTER_METADATA, base_load_dtype, precision_flags

# /proc/cpuinfo flag sets of the three CPU classes this project runs on (abridged to what matters).
AVX2_ONLY = {"sse4_2", "avx", "avx2", "fma"}
AVX512_BF16 = AVX2_ONLY | {"avx512f", "avx512bw", "avx512_vnni", "avx512_bf16"}
AMX = AVX2_ONLY | {"avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "amx_int8"}


@pytest.fixture
def cpu(monkeypatch):
    def use(flags, cuda_capability=None):
        monkeypatch.setattr(models, "cpu_flags", lambda: set(flags))
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda_capability is not None)
        if cuda_capability is not None:
            monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: cuda_capability)
    return use


@pytest.mark.parametrize("flags,expected", [(AVX2_ONLY, "float32"), (AVX512_BF16, "bfloat16"), (AMX, "bfloat16"),
                                            (set(), "float32")])
def test_auto_on_cpu(cpu, flags, expected):
    cpu(flags)
    assert models.resolve_dtype("auto") == expected
    assert models.torch_dtype("auto") == getattr(torch, expected)


@pytest.mark.parametrize("capability,expected", [((7, 0), "float32"), ((7, 5), "float32"), ((8, 0), "bfloat16"),
                                                 ((9, 0), "bfloat16")])
def test_auto_on_cuda_follows_the_device_not_the_cpu(cpu, capability, expected):
    cpu(AVX2_ONLY, cuda_capability=capability)  # the host CPU has no bf16; the GPU decides
    assert models.resolve_dtype("auto") == expected


@pytest.mark.parametrize("name", ["float32", "bfloat16", "float16"])
def test_explicit_names_are_kept_on_every_machine(cpu, name):
    for flags in (AVX2_ONLY, AVX512_BF16, AMX):
        cpu(flags)
        assert models.resolve_dtype(name) == name


def test_explicit_bf16_on_avx2_warns_once_per_load(cpu, capsys):
    cpu(AVX2_ONLY)
    assert models.torch_dtype("bfloat16") == torch.bfloat16
    assert "emulated" in capsys.readouterr().err
    cpu(AVX512_BF16)
    models.torch_dtype("bfloat16")
    assert capsys.readouterr().err == ""


def test_unknown_name_is_one_line(cpu):
    with pytest.raises(HumpbackError, match="model.dtype must be one of auto, float32"):
        models.resolve_dtype("fp8")


def test_params_yaml_rejects_an_unknown_dtype(tmp_path):
    from humpback.config import load_params

    (tmp_path / "params.yaml").write_text("model:\n  dtype: half\n")
    with pytest.raises(HumpbackError, match="params.yaml: model.dtype must be one of"):
        load_params(str(tmp_path / "params.yaml"))


def test_training_precision_follows_the_resolved_dtype(cpu):
    auto = ModelParams(dtype="auto")
    cpu(AVX2_ONLY)
    assert precision_flags(auto, on_gpu=False) == {"bf16": False, "fp16": False}
    assert base_load_dtype(auto, on_gpu=False) == "float32"
    cpu(AMX)
    assert precision_flags(auto, on_gpu=False) == {"bf16": True, "fp16": False}
    assert base_load_dtype(auto, on_gpu=False) == "float32"  # CPU autocast: fp32 weights, bf16 matmuls
    cpu(AVX2_ONLY, cuda_capability=(8, 0))
    assert precision_flags(auto, on_gpu=True) == {"bf16": True, "fp16": False}
    assert base_load_dtype(auto, on_gpu=True) == "bfloat16"
    cpu(AVX2_ONLY, cuda_capability=(7, 0))
    assert precision_flags(auto, on_gpu=True) == {"bf16": False, "fp16": False}


def test_cache_fingerprint_is_the_resolved_dtypes(cpu, tiny_model):
    """auto shares the cache entries of the name it resolves to, and never those of the other one."""
    cpu(AVX512_BF16)
    assert models.fingerprint(tiny_model, dtype="auto") == models.fingerprint(tiny_model, dtype="bfloat16")
    cpu(AVX2_ONLY)
    assert models.fingerprint(tiny_model, dtype="auto") == models.fingerprint(tiny_model, dtype="float32")
    assert models.fingerprint(tiny_model, dtype="float32") != models.fingerprint(tiny_model, dtype="bfloat16")


def test_adapter_and_metrics_record_the_resolved_dtype(cpu, tiny_model, tmp_path):
    from humpback.training import train_lora

    cpu(AVX2_ONLY)
    examples = [{"prompt": f"question {i}?", "completion": f" answer {i}."} for i in range(6)]
    params = TrainParams(max_steps=1, per_device_train_batch_size=2, max_length=32, eval_size=0, logging_steps=1,
                         lora_r=4, lora_alpha=8, lora_dropout=0.0)
    out = tmp_path / "adapter"
    metrics = train_lora(ModelParams(base=tiny_model, dtype="auto"), params, examples, [], str(out),
                         str(tmp_path / "live"))
    assert metrics["dtype"] == "float32"
    with open(os.path.join(out, ADAPTER_METADATA), encoding="utf-8") as f:
        assert json.load(f) == {"base_model": tiny_model, "dtype": "float32", "load_in_4bit": False}
