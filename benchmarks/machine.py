"""What the benchmarks report beside every figure: the CPU, and the matmul peak of the model's own shapes.

Shared by bench_train.py and bench_engine_dtype.py (run from the repo root: `python benchmarks/<name>.py`).
"""

from __future__ import annotations

import platform
import subprocess
import time

import torch


def cpu_model() -> str:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        return platform.processor()
    name = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("Model name")), "?")
    flags = next((ln for ln in text.splitlines() if ln.startswith("Flags")), "")
    native = [f for f in ("avx512_bf16", "amx_bf16", "amx_tile") if f in flags.split()]
    return f"{name}; native bf16 flags: {', '.join(native) or 'none'}"


# ---------------------------------------------------------------- matmul peak of the model's own shapes

def matmul_shapes(config, tokens: int) -> list[tuple[int, int, int, int]]:
    """(m, k, n, count per layer-equivalent) of the linear layers, forward and backward-of-activations."""
    h, i = config.hidden_size, config.intermediate_size
    kv = config.num_key_value_heads * (h // config.num_attention_heads)
    fwd = [(tokens, h, h, 2), (tokens, h, kv, 2), (tokens, h, i, 2), (tokens, i, h, 1)]
    bwd = [(m, n, k, c) for m, k, n, c in fwd]  # dX = dY @ W^T
    return fwd + bwd


def matmul_peak(config, dtype, tokens: int = 1024, reps: int = 5) -> float:
    """GFLOP/s of torch.mm over one layer's worth of the model's linear shapes (best of `reps`)."""
    shapes = matmul_shapes(config, tokens)
    mats = [(torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype), c) for m, k, n, c in shapes]
    flops = sum(2 * a.shape[0] * a.shape[1] * b.shape[1] * c for a, b, c in mats)
    best = float("inf")
    for r in range(reps + 1):
        t = time.perf_counter()
        for a, b, c in mats:
            for _ in range(c):
                torch.mm(a, b)
        if r:  # the first pass warms up
            best = min(best, time.perf_counter() - t)
    return flops / best / 1e9
