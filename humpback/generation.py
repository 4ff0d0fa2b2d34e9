"""Batched generation and next-token scoring over a shared prompt prefix, with a crash-safe result cache.

Every prompt is `prefix + suffix`. The prefix (a template header, or the rater's few-shot block) is
encoded once and its KV cache is reused for every batch. Suffixes are sorted by length and padded on
the left of the suffix, between the prefix and the text: the attention mask hides the padding and
position ids come from the mask, so each row computes exactly what it would alone.

Results are written to a SQLite cache as soon as each batch completes, keyed by a hash of the model
fingerprint (weights and adapter), the full prompt and the decoding params. Stage outputs are built
from the cache at the end, so they stay pure functions of their inputs; the cache lives outside the
DVC outs (see models.cache_dir) because it is an accelerator, not a result: deleting it changes
nothing but the time a rerun takes.
"""

from __future__ import annotations

import copy
import hashlib
import json
import sqlite3
import sys
import time
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm


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

    def put_many(self, items: dict[str, object]) -> None:
        with self.db:
            self.db.executemany(
                "INSERT OR REPLACE INTO results VALUES (?, ?)", [(k, json.dumps(v)) for k, v in items.items()]
            )


def result_key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


class Engine:
    """Runs one model over many `prefix + suffix` prompts, batched, cached and resumable."""

    def __init__(self, model, tokenizer, fingerprint: str, batch_size: int, cache: ResultCache | None = None,
                 add_special_tokens: bool = True):
        self.model = model
        self.tok = tokenizer
        self.fingerprint = fingerprint
        self.batch_size = batch_size
        self.cache = cache
        self.add_special_tokens = add_special_tokens
        self.stats = {"items": 0, "cached": 0, "computed": 0, "prompt_tokens_computed": 0,
                      "prompt_tokens_full": 0, "generated_tokens": 0, "seconds": 0.0}
        eos = tokenizer.eos_token_id
        self.eos_ids = list({eos, *((model.generation_config.eos_token_id or []) if isinstance(model.generation_config.eos_token_id, list) else [model.generation_config.eos_token_id])} - {None})

    @property
    def device(self):
        return next(self.model.parameters()).device

    def _encode_prefix(self, prefix: str):
        ids = self.tok(prefix, add_special_tokens=self.add_special_tokens)["input_ids"] if prefix else []
        if not ids:
            return [], None
        with torch.no_grad():
            out = self.model(torch.tensor([ids], device=self.device), use_cache=True)
        self.stats["prompt_tokens_computed"] += len(ids)
        return ids, out.past_key_values

    def _batch_inputs(self, prefix_ids, prefix_kv, suffix_ids: list[list[int]]):
        """Input ids `prefix | pad | suffix`, its mask, and a copy of the prefix cache for the batch."""
        width = max(len(s) for s in suffix_ids)
        pad = self.tok.pad_token_id
        rows = [prefix_ids + [pad] * (width - len(s)) + s for s in suffix_ids]
        mask = [[1] * len(prefix_ids) + [0] * (width - len(s)) + [1] * len(s) for s in suffix_ids]
        input_ids = torch.tensor(rows, device=self.device)
        attention_mask = torch.tensor(mask, device=self.device)
        kv = None
        if prefix_kv is not None:
            kv = copy.deepcopy(prefix_kv)
            kv.batch_repeat_interleave(len(rows))
        self.stats["prompt_tokens_computed"] += len(rows) * width
        self.stats["prompt_tokens_full"] += sum(len(prefix_ids) + len(s) for s in suffix_ids)
        return input_ids, attention_mask, kv

    def _run(self, kind: str, params: dict, prefix: str, suffixes: list[str], compute, desc: str) -> list:
        """Shared driver: look up the cache, compute what is missing batch by batch, store as we go."""
        keys = [result_key(kind, self.fingerprint, params, prefix + s) for s in suffixes]
        done = self.cache.get_many(list(set(keys))) if self.cache else {}
        todo = sorted({k: s for k, s in zip(keys, suffixes) if k not in done}.items(),
                      key=lambda kv: -len(kv[1]))
        self.stats["items"] += len(suffixes)
        self.stats["cached"] += len(suffixes) - sum(1 for k in keys if k not in done)
        if todo:
            prefix_ids, prefix_kv = self._encode_prefix(prefix)
            encoded = [(k, self.tok(s, add_special_tokens=False)["input_ids"]) for k, s in todo]
            encoded.sort(key=lambda kv: -len(kv[1]))  # similar lengths share a batch: less padding
            start, tokens0 = time.perf_counter(), self.stats["generated_tokens"]
            with tqdm(total=len(encoded), desc=desc, unit="ex", dynamic_ncols=True) as bar:
                for i in range(0, len(encoded), self.batch_size):
                    batch = encoded[i : i + self.batch_size]
                    results = compute(prefix_ids, prefix_kv, [ids for _, ids in batch])
                    fresh = {k: r for (k, _), r in zip(batch, results)}
                    if self.cache:
                        self.cache.put_many(fresh)
                    done.update(fresh)
                    self.stats["computed"] += len(batch)
                    elapsed = time.perf_counter() - start
                    bar.set_postfix(tok_s=f"{(self.stats['generated_tokens'] - tokens0) / max(elapsed, 1e-9):.1f}")
                    bar.update(len(batch))
            self.stats["seconds"] += time.perf_counter() - start
        return [done[k] for k in keys]

    def report(self, name: str) -> None:
        s = self.stats
        print(f"{name}: {s['items']} items ({s['cached']} from cache, {s['computed']} computed); "
              f"prompt tokens computed {s['prompt_tokens_computed']} of {s['prompt_tokens_full']} in full prompts; "
              f"{s['generated_tokens']} tokens generated in {s['seconds']:.1f}s", file=sys.stderr)

    def generate(self, prefix: str, suffixes: list[str], decoding: Decoding, desc: str = "generate") -> list[str]:
        """Continue each `prefix + suffix`; each sequence stops at its own EOS."""

        def compute(prefix_ids, prefix_kv, suffix_ids):
            input_ids, attention_mask, kv = self._batch_inputs(prefix_ids, prefix_kv, suffix_ids)
            if decoding.do_sample:  # seeded per batch content, so a recomputed batch samples the same
                torch.manual_seed(decoding.seed + int(result_key(suffix_ids)[:8], 16))
            sampling = dict(temperature=decoding.temperature, top_p=decoding.top_p) if decoding.do_sample else {}
            with torch.no_grad():
                out = self.model.generate(
                    input_ids=input_ids, attention_mask=attention_mask, past_key_values=kv,
                    max_new_tokens=decoding.max_new_tokens, do_sample=decoding.do_sample,
                    eos_token_id=self.eos_ids, pad_token_id=self.tok.pad_token_id, **sampling,
                )
            texts = []
            for row in out[:, input_ids.shape[1] :].tolist():
                n = next((j for j, t in enumerate(row) if t in self.eos_ids), len(row))
                self.stats["generated_tokens"] += n + (n < len(row))
                texts.append(self.tok.decode(row[:n], skip_special_tokens=True).strip())
            return texts

        return self._run("generate", decoding.as_dict(), prefix, suffixes, compute, desc)

    def next_token_probs(self, prefix: str, suffixes: list[str], candidates: list[int], desc: str = "score") -> list[list[float]]:
        """Probability of each candidate token right after each `prefix + suffix` (one forward pass)."""

        def compute(prefix_ids, prefix_kv, suffix_ids):
            input_ids, attention_mask, kv = self._batch_inputs(prefix_ids, prefix_kv, suffix_ids)
            position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
            start = input_ids.shape[1] - max(len(s) for s in suffix_ids) if kv is not None else 0
            with torch.no_grad():
                logits = self.model(
                    input_ids=input_ids[:, start:], attention_mask=attention_mask,
                    position_ids=position_ids[:, start:], past_key_values=kv, use_cache=kv is not None,
                    logits_to_keep=1,
                ).logits[:, -1].float()
            probs = torch.softmax(logits, dim=-1)[:, candidates]
            return probs.tolist()

        return self._run("next_token_probs", {"candidates": candidates}, prefix, suffixes, compute, desc)
