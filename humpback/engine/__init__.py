"""The engines that run a model over many `prefix + suffix` prompts, batched, cached and resumable.

- base: the decoding params, the result cache and its keys, the shared batched driver;
- native: the torch engine (our decoding loop, over kv_cache's in-place KV buffer);
- vllm: the same interface on vLLM, an optional install (vllm_setup, output_head).

`open_engine` is the one place that names both; the vLLM modules are imported only when asked for.
"""

from __future__ import annotations

from .. import HumpbackError
from ..dist import world_size
from .base import Decoding, ResultCache
from .native import Engine

__all__ = ["Decoding", "Engine", "ResultCache", "open_engine"]


def open_engine(ref: str, model_params, batch_size: int, adapter: str | None = None, chat: bool = False,
                engine: str = "native"):
    """An engine over the model `ref` (with a LoRA `adapter` merged), at `model_params`' precision, with
    the project-wide result cache. `chat`: prompts come from the chat template, which holds its own
    special tokens. `engine`: `native` (native.Engine) or `vllm` (vllm.VllmEngine, the same methods and
    cache)."""
    from .. import models

    m = model_params
    if engine == "vllm":
        from .vllm import open_vllm_engine

        if world_size() > 1:  # each process would start its own vLLM on all devices
            raise HumpbackError("launch.engine: vllm runs in one process (vLLM batches and parallelises by "
                                "itself): set launch.num_processes: 1, or launch.engine: native")

        opened = open_vllm_engine(ref, model_params, batch_size, adapter=adapter, chat=chat)
    else:
        tok = models.load_tokenizer(adapter or ref)
        model = models.load_model(ref, m.load_in_4bit, m.dtype, adapter=adapter)
        fingerprint = models.fingerprint(ref, adapter=adapter, dtype=m.dtype, load_in_4bit=m.load_in_4bit)
        opened = Engine(model, tok, fingerprint, batch_size, ResultCache.default(),
                        add_special_tokens=not (chat and tok.chat_template))
    opened.dtype = models.resolve_dtype(m.dtype)  # what it computes in, for the stage metrics
    return opened
