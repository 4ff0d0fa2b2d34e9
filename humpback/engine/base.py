"""What both engines share: the decoding params, the crash-safe result cache and its keys, and the one
batched, cached, sharded driver (`BatchedEngine._run`) that the native and the vLLM engine run on.

Results are written to a SQLite cache as soon as each batch completes, keyed by a hash of the model
fingerprint (weights and adapter), the full prompt, the decoding params and the batch the prompt was
computed in (at bf16 a batch's other rows can move a result; see `BatchedEngine._run`). Stage outputs are
built from the cache at the end, so they stay pure functions of their inputs; the cache lives outside the
DVC outs (see models.cache_dir) because it is an accelerator, not a result: deleting it changes nothing but
the time a rerun takes. A run killed at any point loses at most the batch in flight. Under `accelerate
launch`, processes share out the batches (the same ones) and gather the results.

This module imports neither engine; each engine's module imports it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
import sys
import time
from dataclasses import asdict, dataclass

from tqdm.auto import tqdm

from ..dist import process_state


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
        from ..models import cache_dir

        return cls(f"{cache_dir()}/results.sqlite")

    def put_many(self, items: dict[str, object]) -> None:
        with self.db:
            self.db.executemany(
                "INSERT OR REPLACE INTO results VALUES (?, ?)", [(k, json.dumps(v)) for k, v in items.items()]
            )


def result_key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def batch_key(batch: list[tuple[str, object]], key: str) -> str:
    """Where an item's result is cached: its key within its batch (the keys of all the batch's items)."""
    return result_key("batch", [k for k, _ in batch], key)


def _length(encoded) -> int:
    """Tokens in an encoded item: a list of ids, or a (prompt ids, continuation ids) pair."""
    return len(encoded[0]) + len(encoded[1]) if isinstance(encoded, tuple) else len(encoded)


class BatchedEngine:
    """Runs one model over many `prefix + suffix` prompts, batched, cached and resumable.

    A subclass holds the model, encodes the shared prefix (`_encode_prefix`) and computes a batch (the
    `compute` it passes to `_run`).
    """

    # Sort items by length before cutting batches (similar lengths share a batch: less padding). Without
    # it (vLLM schedules its own batches) batches keep the item order, and each is encoded when computed.
    longest_first = True
    # Deal the batches to the processes of `accelerate launch`. Without it the run is one process, never
    # asks accelerate, and the progress bar follows tqdm's own settings.
    shards = True

    def __init__(self, tokenizer, fingerprint: str, batch_size: int, cache: ResultCache | None = None,
                 add_special_tokens: bool = True, **extra_stats):
        self.tok = tokenizer
        self.fingerprint = fingerprint
        self.batch_size = batch_size
        self.cache = cache
        self.add_special_tokens = add_special_tokens
        self.stats = {"items": 0, "cached": 0, "computed": 0, "prompt_tokens_computed": 0,
                      "prompt_tokens_full": 0, "generated_tokens": 0, "decode_tokens_computed": 0,
                      "seconds": 0.0, "cpu_seconds": 0.0, **extra_stats}

    @property
    def run_batch_size(self) -> int:
        """Items per batch of the driver: one cache transaction each."""
        return self.batch_size

    def _encode_prefix(self, prefix: str):
        """The shared prefix as `compute` takes it; called once per `_run` that computes anything."""
        return self.tok(prefix, add_special_tokens=self.add_special_tokens)["input_ids"] if prefix else []

    def _computing(self):
        """The context the batches are computed in."""
        return contextlib.nullcontext()

    def _run(self, kind: str, params: dict, prefix: str, suffixes: list[str], compute, desc: str,
             rate_stat: str | None = None, encode=None) -> list:
        """Shared driver: batch every distinct prompt, compute the batches the cache lacks, store as we go.

        `compute(prefix, batch)`: the results of a batch of `(key, encoded suffix)`, `prefix` being what
        `_encode_prefix` returned. Batches are formed from the full item list (longest first), never from
        what the cache lacks: at bf16 a result can depend on which prompts share its batch, so a result is
        cached under its batch (`batch_key`), and a warm cache, a resumed run and a run on N processes all
        give the results of a cold one-process run. Under `accelerate launch` the batches are dealt to the
        processes round-robin (they are sorted by length, so contiguous chunks would give one process all
        the long prompts) and the results gathered; every process writes its batches to the shared cache
        as it goes. `rate_stat`: the stat whose rate the progress bar shows.
        """
        state = process_state() if self.shards else None
        num_processes, process_index = (state.num_processes, state.process_index) if state else (1, 0)
        keys = [result_key(kind, self.fingerprint, params, prefix + s) for s in suffixes]
        unique = dict(zip(keys, suffixes))
        encode = encode or (lambda s: self.tok(s, add_special_tokens=False)["input_ids"])
        items = list(unique.items())
        if self.longest_first:
            items = [(k, encode(s)) for k, s in items]
            items.sort(key=lambda kv: -_length(kv[1]))
        size = self.run_batch_size
        batches = [items[i : i + size] for i in range(0, len(items), size)]
        stored = [[batch_key(b, k) for k, _ in b] for b in batches]
        done = self.cache.get_many([s for ss in stored for s in ss]) if self.cache else {}
        todo = [i for i, ss in enumerate(stored) if any(s not in done for s in ss)]
        if num_processes > 1:  # the main process's view decides: another may have looked later
            from accelerate.utils import broadcast_object_list

            todo = broadcast_object_list([todo])[0]
        mine = todo[process_index::num_processes]
        self.stats["items"] += len(suffixes)
        self.stats["cached"] += len(items) - sum(len(batches[i]) for i in todo)
        fresh: dict[str, object] = {}
        if mine:
            start, cpu0 = time.perf_counter(), time.process_time()
            rate0 = self.stats[rate_stat] if rate_stat else 0
            unit = "tok/s" if rate_stat == "generated_tokens" else "prompt tok/s"
            bar_options = {"disable": not state.is_main_process} if state else {}
            with self._computing(), tqdm(total=sum(len(batches[i]) for i in mine), desc=desc, unit="ex",
                                         dynamic_ncols=True, **bar_options) as bar:
                shared = self._encode_prefix(prefix)
                for i in mine:
                    batch = batches[i] if self.longest_first else [(k, encode(s)) for k, s in batches[i]]
                    results = compute(shared, batch)
                    computed = dict(zip(stored[i], results))
                    if self.cache:
                        self.cache.put_many(computed)  # committed: a kill from here on loses nothing
                    fresh.update(computed)
                    self.stats["computed"] += len(batches[i])
                    if rate_stat:
                        elapsed = time.perf_counter() - start
                        bar.set_postfix_str(f"{(self.stats[rate_stat] - rate0) / max(elapsed, 1e-9):.1f} {unit}")
                    bar.update(len(batches[i]))
            self.stats["seconds"] += time.perf_counter() - start
            self.stats["cpu_seconds"] += time.process_time() - cpu0  # this process only
        if num_processes > 1 and todo:
            from accelerate.utils import gather_object

            for part in gather_object([fresh]):  # one dict per process
                fresh.update(part)
        done.update(fresh)
        if self.cache and (missing := [s for ss in stored for s in ss if s not in done]):
            done.update(self.cache.get_many(missing))  # cached batches this process looked up too early
        by_item = {k: done[s] for ss, b in zip(stored, batches) for s, (k, _) in zip(ss, b)}
        return [by_item[k] for k in keys]

    def _counts(self) -> str:
        """The report's common part: items, cache hits and prompt tokens."""
        s = self.stats
        return (f"{s['items']} items ({s['cached']} from cache, {s['computed']} computed); "
                f"prompt tokens computed {s['prompt_tokens_computed']} of {s['prompt_tokens_full']} in full prompts")

    def report(self, name: str) -> None:
        s = self.stats
        print(f"{name}: {self._counts()}; {s['generated_tokens']} tokens generated in {s['seconds']:.1f}s "
              f"({s['generated_tokens'] / max(s['seconds'], 1e-9):.1f} tok/s generated, "
              f"{s['prompt_tokens_computed'] / max(s['seconds'], 1e-9):.0f} tok/s prompt)", file=sys.stderr)
