"""The native engine's KV cache: a preallocated buffer per layer, written in place.

Hugging Face's `DynamicLayer` concatenates the whole cache at every decoding step; on CPU that copy cost
as much as the step's matmuls (benchmarks/RESULTS.md). The shared prefix is broadcast into the buffer:
one copy, no deepcopy per batch.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


class BufferLayer(DynamicLayer):
    """A `DynamicLayer` that appends in place into a preallocated `[batch, heads, capacity, dim]` buffer.

    `keys`/`values` are views of the filled part, so attention reads exactly what a `DynamicLayer`
    would hold, without the per-step `torch.cat` of the whole cache.
    """

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity
        self.length = 0
        self._k = self._v = None

    def _allocate(self, like: torch.Tensor, batch: int, capacity: int) -> None:
        shape = (batch, like.shape[1], capacity, like.shape[3])
        self._k, self._v = like.new_empty(shape), like.new_empty(shape)
        self.dtype, self.device, self.is_initialized = like.dtype, like.device, True

    def _expose(self) -> None:
        self.keys = self._k[:, :, : self.length]
        self.values = self._v[:, :, : self.length]

    def fill(self, keys: torch.Tensor, values: torch.Tensor, batch: int) -> None:
        """Start from a (batch-1) prefix cache, broadcast to `batch` rows."""
        self._allocate(keys, batch, max(self.capacity, keys.shape[2]))
        self.length = keys.shape[2]
        self._k[:, :, : self.length] = keys
        self._v[:, :, : self.length] = values
        self._expose()

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if self._k is None:
            self._allocate(key_states, key_states.shape[0], self.capacity)
        end = self.length + key_states.shape[2]
        if end > self._k.shape[2]:  # over capacity: grow (the engine sizes buffers so this does not happen)
            old_k, old_v = self._k, self._v
            self._allocate(key_states, old_k.shape[0], max(end, 2 * old_k.shape[2]))
            self._k[:, :, : self.length] = old_k[:, :, : self.length]
            self._v[:, :, : self.length] = old_v[:, :, : self.length]
        self._k[:, :, self.length : end] = key_states
        self._v[:, :, self.length : end] = value_states
        self.length = end
        self._expose()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self._k is None:
            return
        old_k, old_v = self._k, self._v
        self._allocate(old_k, len(indices), old_k.shape[2])
        self._k[:, :, : self.length] = old_k[indices, :, : self.length]
        self._v[:, :, : self.length] = old_v[indices, :, : self.length]
        self._expose()

    def batch_repeat_interleave(self, repeats: int) -> None:
        raise NotImplementedError("BufferLayer is filled per batch; it is never repeated")


def buffer_cache(num_layers: int, capacity: int, prefix_kv=None, batch: int = 1) -> DynamicCache:
    """A cache of `BufferLayer`s with room for `capacity` tokens, holding `prefix_kv` (a one-row cache of
    the shared prefix, if any) broadcast to `batch` rows."""
    layers = [BufferLayer(capacity) for _ in range(num_layers)]
    if prefix_kv is not None:
        for layer, shared in zip(layers, prefix_kv.layers):
            layer.fill(shared.keys, shared.values, batch)
    cache = DynamicCache()
    cache.layers = layers
    return cache
