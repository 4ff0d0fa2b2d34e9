"""What the vLLM engine needs before it starts: vLLM itself (an optional install), the environment of its
CPU backend, the safetensors directory it loads (the native engine's weights, LoRA merged) and the model
fingerprint its results are cached under."""

from __future__ import annotations

import os
import sys

from .. import HumpbackError

INSTALL_HINT = "engine: vllm needs vLLM: run scripts/setup-vllm"


def import_vllm():
    try:
        import vllm
    except ImportError as e:
        raise HumpbackError(f"{INSTALL_HINT} ({e})") from None
    return vllm


def cpu_env() -> None:
    """vLLM's CPU backend: bind its OpenMP threads to every core this process may use, reserve none for
    the front end (here it only waits), and keep the KV cache modest. Each is only a default."""
    cores = sorted(os.sched_getaffinity(0))
    contiguous = cores == list(range(cores[0], cores[-1] + 1))
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND",
                          f"{cores[0]}-{cores[-1]}" if contiguous else ",".join(map(str, cores)))
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # GiB
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # vLLM's INFO lines would bury the stage's log


def merged_model_dir(ref: str, adapter: str | None = None, dtype: str = "float32") -> str:
    """A Hugging Face safetensors directory vLLM can load, holding exactly the weights the native engine
    computes with: `models.load_model(ref, dtype=dtype, adapter=adapter)` (a GGUF materialized, the LoRA
    adapter merged by peft's merge_and_unload at `dtype`, as the native engine merges it), written once to
    the cache directory under the model fingerprint. A float32 model without an adapter is the resolved
    directory itself."""
    import shutil

    from .. import models

    path = models.resolve(ref)
    if not adapter and dtype == "float32" and os.path.isdir(path):
        return path
    target = os.path.join(models.cache_dir("models"), f"vllm-{models.fingerprint(ref, adapter=adapter, dtype=dtype)}")
    if os.path.exists(os.path.join(target, "config.json")):
        return target
    print(f"writing {ref}{' + ' + adapter if adapter else ''} at {dtype} for vLLM to {target} (once)", file=sys.stderr)
    model = models.load_model(ref, False, dtype, adapter=adapter)  # merged by load_model
    tok = models.load_tokenizer(adapter or ref)
    tmp = f"{target}.tmp{os.getpid()}"
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    try:
        os.replace(tmp, target)  # atomic: a killed write leaves no half-written model behind
    except OSError:  # another process put the same model there first
        shutil.rmtree(tmp)
    return target


def vllm_fingerprint(ref: str, adapter: str | None, dtype: str, enforce_eager: bool) -> str:
    """The model fingerprint of the native engine, with the engine, its version and mode named in it."""
    from .. import models

    vllm = import_vllm()
    return f"vllm-{vllm.__version__}-{'eager' if enforce_eager else 'compiled'}-" + models.fingerprint(
        ref, adapter=adapter, dtype=dtype)
