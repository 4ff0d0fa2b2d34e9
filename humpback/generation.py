"""Batched generation and next-token scoring over a shared prompt prefix, with a crash-safe result cache.

Every prompt is `prefix + suffix`. The prefix (a template header, or the rater's few-shot block) is
encoded once and its KV cache is reused for every batch. Suffixes are sorted by length and padded on
the left of the suffix, between the prefix and the text: the attention mask hides the padding and
position ids come from the mask, so each row computes exactly what it would alone.

Decoding is our own loop rather than `model.generate`, for three measured or needed reasons
(benchmarks/RESULTS.md):
- the KV cache is a preallocated buffer per layer, written in place (`_BufferLayer`). Hugging Face's
  `DynamicLayer` concatenates the whole cache at every step; on CPU that copy cost as much as the
  step's matmuls. The shared prefix is broadcast into the buffer: one copy, no deepcopy per batch;
- rows that reached their EOS leave the batch (their cache rows are dropped), instead of being
  computed until the longest row finishes;
- sampling draws each row from its own generator, seeded by the row's result key, so a sampled
  result does not depend on which other prompts share its batch: a resumed or extended run samples
  what an uninterrupted one would have. Greedy decoding is a plain argmax, identical to unbatched
  `model.generate`.

Results are written to a SQLite cache as soon as each batch completes, keyed by a hash of the model
fingerprint (weights and adapter), the full prompt, the decoding params and the batch the prompt was
computed in (at bf16 a batch's other rows can move a result; see `Engine._run`). Stage outputs are built
from the cache at the end, so they stay pure functions of their inputs; the cache lives outside the
DVC outs (see models.cache_dir) because it is an accelerator, not a result: deleting it changes
nothing but the time a rerun takes. A run killed at any point loses at most the batch in flight.
Under `accelerate launch`, processes share out the batches (the same ones) and gather the results.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import sqlite3
import sys
import time
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from . import HumpbackError, work
from .dist import process_state, world_size

# Bumped when the sampler changes what a seeded sampled result is, so the cache never mixes them.
SAMPLER_VERSION = 2


@dataclass(frozen=True)
class Decoding:
    max_new_tokens: int = 48
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0

    def as_dict(self) -> dict:
        d = asdict(self)
        if not self.do_sample:  # these do not change a greedy result, so they must not change its key
            for k in ("temperature", "top_p", "seed"):
                d.pop(k)
        return d


class ResultCache:
    """A key-value store that survives SIGKILL: each batch is one committed SQLite transaction."""

    def __init__(self, path: str):
        self.db = sqlite3.connect(path, timeout=60)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS results (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        self.db.commit()

    def get_many(self, keys: list[str]) -> dict[str, object]:
        found = {}
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            rows = self.db.execute(
                f"SELECT key, value FROM results WHERE key IN ({','.join('?' * len(chunk))})", chunk
            ).fetchall()
            found.update((k, json.loads(v)) for k, v in rows)
        return found

    @classmethod
    def default(cls) -> "ResultCache":
        """The project-wide cache in `$HUMPBACK_CACHE_DIR` (see models.cache_dir), shared by all stages."""
        from .models import cache_dir

        return cls(f"{cache_dir()}/results.sqlite")

    def put_many(self, items: dict[str, object]) -> None:
        with self.db:
            self.db.executemany(
                "INSERT OR REPLACE INTO results VALUES (?, ?)", [(k, json.dumps(v)) for k, v in items.items()]
            )


def _length(encoded) -> int:
    """Tokens in an encoded item: a list of ids, or a (prompt ids, continuation ids) pair."""
    return len(encoded[0]) + len(encoded[1]) if isinstance(encoded, tuple) else len(encoded)


def result_key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def batch_key(batch: list[tuple[str, object]], key: str) -> str:
    """Where an item's result is cached: its key within its batch (the keys of all the batch's items)."""
    return result_key("batch", [k for k, _ in batch], key)


class _BufferLayer(DynamicLayer):
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
        raise NotImplementedError("_BufferLayer is filled per batch; it is never repeated")


def _top_p_filter(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filtering, as transformers' TopPLogitsWarper (keeps at least one token)."""
    sorted_logits, sorted_indices = torch.sort(scores, descending=False)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove = cumulative <= (1 - top_p)
    remove[..., -1:] = False
    return scores.masked_fill(remove.scatter(1, sorted_indices, remove), float("-inf"))


class Engine:
    """Runs one model over many `prefix + suffix` prompts, batched, cached and resumable."""

    prefill_tokens = 2048  # tokens per forward pass when a batch's prompts are computed

    def __init__(self, model, tokenizer, fingerprint: str, batch_size: int, cache: ResultCache | None = None,
                 add_special_tokens: bool = True):
        self.model = model
        self.tok = tokenizer
        self.fingerprint = fingerprint
        self.batch_size = batch_size
        self.cache = cache
        self.add_special_tokens = add_special_tokens
        self.stats = {"items": 0, "cached": 0, "computed": 0, "prompt_tokens_computed": 0,
                      "prompt_tokens_full": 0, "generated_tokens": 0, "decode_tokens_computed": 0,
                      "seconds": 0.0, "cpu_seconds": 0.0}
        configured = model.generation_config.eos_token_id  # an id, a list of ids, or None
        configured = configured if isinstance(configured, list) else [configured]
        self.eos_ids = sorted({tokenizer.eos_token_id, *configured} - {None})
        # Our in-place buffer cache stands in for plain full-attention layers only; any other layer
        # type (sliding window, linear attention) keeps its own Hugging Face cache class.
        try:
            layers = DynamicCache(config=model.config).layers
        except Exception:  # an unusual config: use the model's own cache
            layers = []
        self._buffer_cache = bool(layers) and all(type(layer) is DynamicLayer for layer in layers)
        self._num_layers = len(layers)

    @property
    def device(self):
        return next(self.model.parameters()).device

    def _encode_prefix(self, prefix: str):
        ids = self.tok(prefix, add_special_tokens=self.add_special_tokens)["input_ids"] if prefix else []
        if not ids:
            return [], None
        out = self.model(torch.tensor([ids], device=self.device), use_cache=True, logits_to_keep=1)
        self.stats["prompt_tokens_computed"] += len(ids)
        work.add(forward=len(ids), forward_padded=len(ids))
        return ids, out.past_key_values

    def _new_cache(self, prefix_kv, batch: int, capacity: int):
        """A cache for `batch` rows holding the shared prefix (if any), with room for `capacity` tokens."""
        if self._buffer_cache:
            layers = [_BufferLayer(capacity) for _ in range(self._num_layers)]
            if prefix_kv is not None:
                for layer, shared in zip(layers, prefix_kv.layers):
                    layer.fill(shared.keys, shared.values, batch)
            cache = DynamicCache()
            cache.layers = layers
            return cache
        if prefix_kv is None:
            return DynamicCache(config=self.model.config)
        kv = copy.deepcopy(prefix_kv)
        kv.batch_repeat_interleave(batch)
        return kv

    def _prefill(self, prefix_ids, prefix_kv, suffix_ids: list[list[int]], extra_capacity: int,
                 hidden: bool = False):
        """Run `prefix | pad | suffix` for a batch, the prefix coming from its shared cache.

        Returns the logits after each prompt, the cache, the attention mask and each row's last position.
        With `hidden`, the first item is (logits, last-layer hidden state) after each prompt.
        """
        width = max(len(s) for s in suffix_ids)
        pad = self.tok.pad_token_id
        rows = [[pad] * (width - len(s)) + s for s in suffix_ids]
        mask = [[1] * len(prefix_ids) + [0] * (width - len(s)) + [1] * len(s) for s in suffix_ids]
        input_ids = torch.tensor(rows, device=self.device)
        attention_mask = torch.tensor(mask, device=self.device)
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)[:, len(prefix_ids) :]
        cache = self._new_cache(prefix_kv, len(rows), len(prefix_ids) + width + extra_capacity)
        self.stats["prompt_tokens_computed"] += len(rows) * width
        self.stats["prompt_tokens_full"] += sum(len(prefix_ids) + len(s) for s in suffix_ids)
        work.add(forward=sum(len(s) for s in suffix_ids), forward_padded=len(rows) * width)
        # In slices of about `prefill_tokens` tokens: smaller activations stay in cache and in reused
        # memory; measured ~8% faster than one forward over the whole batch (benchmarks/RESULTS.md).
        step, start = max(1, self.prefill_tokens // len(rows)), len(prefix_ids)
        for i in range(0, width, step):
            j = min(width, i + step)
            out = self.model(
                input_ids=input_ids[:, i:j], attention_mask=attention_mask[:, : start + j],
                position_ids=position_ids[:, i:j], past_key_values=cache, use_cache=True, logits_to_keep=1,
                output_hidden_states=hidden and j == width,
            )
            logits = out.logits[:, -1]
        if hidden:
            logits = (logits, out.hidden_states[-1][:, -1])
        return logits, cache, attention_mask, position_ids[:, -1]

    def _run(self, kind: str, params: dict, prefix: str, suffixes: list[str], compute, desc: str,
             rate_stat: str, encode=None) -> list:
        """Shared driver: batch every distinct prompt, compute the batches the cache lacks, store as we go.

        Batches are formed from the full item list (longest first), never from what the cache lacks: at
        bf16 a result can depend on which prompts share its batch, so a result is cached under its batch
        (`batch_key`), and a warm cache, a resumed run and a run on N processes all give the results of a
        cold one-process run. Under `accelerate launch` the batches are dealt to the processes round-robin
        (they are sorted by length, so contiguous chunks would give one process all the long prompts) and
        the results gathered; every process writes its batches to the shared cache as it goes.
        """
        state = process_state()
        keys = [result_key(kind, self.fingerprint, params, prefix + s) for s in suffixes]
        unique = dict(zip(keys, suffixes))
        encode = encode or (lambda s: self.tok(s, add_special_tokens=False)["input_ids"])
        encoded = [(k, encode(s)) for k, s in unique.items()]
        encoded.sort(key=lambda kv: -_length(kv[1]))  # similar lengths share a batch: less padding
        batches = [encoded[i : i + self.batch_size] for i in range(0, len(encoded), self.batch_size)]
        stored = [[batch_key(b, k) for k, _ in b] for b in batches]
        done = self.cache.get_many([s for ss in stored for s in ss]) if self.cache else {}
        todo = [i for i, ss in enumerate(stored) if any(s not in done for s in ss)]
        if state.num_processes > 1:  # the main process's view decides: another may have looked later
            from accelerate.utils import broadcast_object_list

            todo = broadcast_object_list([todo])[0]
        mine = todo[state.process_index :: state.num_processes]
        self.stats["items"] += len(suffixes)
        self.stats["cached"] += len(encoded) - sum(len(batches[i]) for i in todo)
        fresh: dict[str, object] = {}
        if mine:
            start, cpu0 = time.perf_counter(), time.process_time()
            rate0 = self.stats[rate_stat]
            unit = "tok/s" if rate_stat == "generated_tokens" else "prompt tok/s"
            with torch.inference_mode(), tqdm(total=sum(len(batches[i]) for i in mine), desc=desc, unit="ex",
                                              dynamic_ncols=True, disable=not state.is_main_process) as bar:
                prefix_ids, prefix_kv = self._encode_prefix(prefix)
                for i in mine:
                    results = compute(prefix_ids, prefix_kv, batches[i])
                    batch = dict(zip(stored[i], results))
                    if self.cache:
                        self.cache.put_many(batch)  # committed: a kill from here on loses nothing
                    fresh.update(batch)
                    self.stats["computed"] += len(batches[i])
                    elapsed = time.perf_counter() - start
                    bar.set_postfix_str(f"{(self.stats[rate_stat] - rate0) / max(elapsed, 1e-9):.1f} {unit}")
                    bar.update(len(batches[i]))
            self.stats["seconds"] += time.perf_counter() - start
            self.stats["cpu_seconds"] += time.process_time() - cpu0
        if state.num_processes > 1 and todo:
            from accelerate.utils import gather_object

            for part in gather_object([fresh]):  # one dict per process
                fresh.update(part)
        done.update(fresh)
        if self.cache and (missing := [s for ss in stored for s in ss if s not in done]):
            done.update(self.cache.get_many(missing))  # cached batches this process looked up too early
        by_item = {k: done[s] for ss, b in zip(stored, batches) for s, (k, _) in zip(ss, b)}
        return [by_item[k] for k in keys]

    def report(self, name: str) -> None:
        s = self.stats
        print(f"{name}: {s['items']} items ({s['cached']} from cache, {s['computed']} computed); "
              f"prompt tokens computed {s['prompt_tokens_computed']} of {s['prompt_tokens_full']} in full prompts; "
              f"{s['generated_tokens']} tokens generated in {s['seconds']:.1f}s "
              f"({s['generated_tokens'] / max(s['seconds'], 1e-9):.1f} tok/s generated, "
              f"{s['prompt_tokens_computed'] / max(s['seconds'], 1e-9):.0f} tok/s prompt)", file=sys.stderr)

    def generate(self, prefix: str, suffixes: list[str], decoding: Decoding, desc: str = "generate") -> list[str]:
        """Continue each `prefix + suffix`; each sequence stops at its own EOS."""
        params = decoding.as_dict()
        if decoding.do_sample:
            params["sampler"] = SAMPLER_VERSION

        def compute(prefix_ids, prefix_kv, batch):
            tokens = self._decode(prefix_ids, prefix_kv, batch, decoding)
            return [self.tok.decode(t, skip_special_tokens=True).strip() for t in tokens]

        return self._run("generate", params, prefix, suffixes, compute, desc, "generated_tokens")

    def _decode(self, prefix_ids, prefix_kv, batch, decoding: Decoding) -> list[list[int]]:
        """Token ids written after each prompt of the batch, up to (not including) its EOS."""
        logits, cache, mask, position = self._prefill(prefix_ids, prefix_kv, [ids for _, ids in batch],
                                                      decoding.max_new_tokens)
        eos = set(self.eos_ids)
        out: list[list[int]] = [[] for _ in batch]
        rows = list(range(len(batch)))  # which result each row of the tensors belongs to
        finished: set[int] = set()
        generators = None
        if decoding.do_sample:  # per row, seeded by the row's key (which includes decoding.seed)
            generators = [torch.Generator(device=self.device).manual_seed(int(k[:15], 16)) for k, _ in batch]
        for step in range(decoding.max_new_tokens):
            if decoding.do_sample:
                scores = logits.float() / decoding.temperature
                if decoding.top_p < 1.0:
                    scores = _top_p_filter(scores, decoding.top_p)
                probs = scores.softmax(-1)
                # Finished rows still present draw from their own generator too; their draws are ignored
                # and never affect another row.
                nxt = torch.cat([torch.multinomial(probs[j], 1, generator=generators[r]) for j, r in enumerate(rows)])
            else:
                nxt = logits.argmax(-1)
            for r, t in zip(rows, nxt.tolist()):
                if r in finished:
                    continue
                self.stats["generated_tokens"] += 1
                if t in eos:
                    finished.add(r)
                else:
                    out[r].append(t)
            if len(finished) == len(batch) or step == decoding.max_new_tokens - 1:
                break
            # Drop finished rows once they are a quarter of the batch: dropping copies the cache, and a
            # decoding step on CPU costs little more per extra row, so one at a time would not pay.
            idle = sum(1 for r in rows if r in finished)
            if idle and idle >= len(rows) // 4:
                keep = [j for j, r in enumerate(rows) if r not in finished]
                index = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(index)
                mask, position, nxt = mask[index], position[index], nxt[index]
                rows = [rows[j] for j in keep]
            mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=1)
            position = position + 1
            self.stats["decode_tokens_computed"] += len(rows)
            work.add(forward=len(rows) - sum(1 for r in rows if r in finished), forward_padded=len(rows))
            logits = self.model(
                input_ids=nxt[:, None], attention_mask=mask, position_ids=position[:, None],
                past_key_values=cache, use_cache=True,
            ).logits[:, -1]
        return out

    def next_token_probs(self, prefix: str, suffixes: list[str], candidates: list[int], desc: str = "score") -> list[list[float]]:
        """Probability of each candidate token right after each `prefix + suffix` (one forward pass)."""

        def compute(prefix_ids, prefix_kv, batch):
            logits, _, _, _ = self._prefill(prefix_ids, prefix_kv, [ids for _, ids in batch], 0)
            return torch.softmax(logits.float(), dim=-1)[:, candidates].tolist()

        return self._run("next_token_probs", {"candidates": candidates}, prefix, suffixes, compute, desc,
                         "prompt_tokens_computed")

    def next_token_features(self, prefix: str, suffixes: list[str], candidates: list[int],
                            desc: str = "score") -> list[dict]:
        """For each `prefix + suffix`: log-probabilities of the candidate tokens next (`logprobs`) and the
        model's last-layer hidden state there (`hidden`), from one forward pass."""

        def compute(prefix_ids, prefix_kv, batch):
            (logits, state), _, _, _ = self._prefill(prefix_ids, prefix_kv, [ids for _, ids in batch], 0, hidden=True)
            logprobs = torch.log_softmax(logits.float(), dim=-1)[:, candidates]
            return [{"logprobs": lp, "hidden": h} for lp, h in zip(logprobs.tolist(), state.float().tolist())]

        return self._run("next_token_features", {"candidates": candidates}, prefix, suffixes, compute, desc,
                         "prompt_tokens_computed")

    def continuation_logprobs(self, prefix: str, prompts: list[str], continuations: list[str],
                              desc: str = "likelihood") -> list[dict]:
        """Summed log-probability (`logprob`) and token count (`tokens`) of each continuation after
        `prefix + prompt`. Only the continuation's positions go through the output layer."""
        sep = "\x00"  # one string per item for the cache key; split again when encoding

        def encode(item):
            prompt, cont = item.split(sep, 1)
            return (self.tok(prompt, add_special_tokens=False)["input_ids"],
                    self.tok(cont, add_special_tokens=False)["input_ids"])

        def compute(prefix_ids, prefix_kv, batch):
            return self._score_continuations(prefix_ids, prefix_kv, [pc for _, pc in batch])

        items = [p + sep + c for p, c in zip(prompts, continuations)]
        return self._run("continuation_logprobs", {}, prefix, items, compute, desc, "prompt_tokens_computed",
                         encode=encode)

    def _score_continuations(self, prefix_ids, prefix_kv, rows: list[tuple[list[int], list[int]]]) -> list[dict]:
        """Right-padded batch of `prompt + continuation` after the shared prefix; log p of the continuation."""
        seqs = [p + c for p, c in rows]
        width = max(len(s) for s in seqs)
        pad = self.tok.pad_token_id
        input_ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs], device=self.device)
        mask = torch.tensor([[1] * len(prefix_ids) + [1] * len(s) + [0] * (width - len(s)) for s in seqs],
                            device=self.device)
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)[:, len(prefix_ids):]
        cache = self._new_cache(prefix_kv, len(seqs), len(prefix_ids) + width) if prefix_kv is not None else None
        self.stats["prompt_tokens_computed"] += len(seqs) * width
        self.stats["prompt_tokens_full"] += sum(len(prefix_ids) + len(s) for s in seqs)
        work.add(forward=sum(len(s) for s in seqs), forward_padded=len(seqs) * width)
        hidden = self.model.model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids,
                                  past_key_values=cache, use_cache=cache is not None).last_hidden_state
        head = self.model.get_output_embeddings()
        out = []
        for r, (p, c) in enumerate(rows):
            if not c:
                out.append({"logprob": 0.0, "tokens": 0})
                continue
            # position t predicts token t+1; the first continuation token is predicted at len(p) - 1
            # (with no prompt tokens, at the prefix's last position, which this batch does not hold)
            start = len(p) - 1
            if start < 0:
                raise ValueError("continuation_logprobs needs a non-empty prompt after the prefix")
            logits = head(hidden[r, start : start + len(c)]).float()
            lp = torch.log_softmax(logits, -1).gather(-1, torch.tensor(c, device=self.device)[:, None])
            out.append({"logprob": float(lp.sum()), "tokens": len(c)})
        return out


def open_engine(ref: str, model_params, batch_size: int, adapter: str | None = None, chat: bool = False,
                engine: str = "native"):
    """An engine over the model `ref` (with a LoRA `adapter` merged), at `model_params`' precision, with
    the project-wide result cache. `chat`: prompts come from the chat template, which holds its own
    special tokens. `engine`: `native` (this module's `Engine`) or `vllm` (vllm_engine.VllmEngine, the
    same methods and cache)."""
    from . import models

    m = model_params
    if engine == "vllm":
        from .vllm_engine import open_vllm_engine

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
