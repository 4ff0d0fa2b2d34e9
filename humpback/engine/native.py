"""The native engine: batched generation and next-token scoring in torch over a shared prompt prefix.

Every prompt is `prefix + suffix`. The prefix (a template header, or the rater's few-shot block) is
encoded once and its KV cache is reused for every batch. Suffixes are sorted by length and padded on
the left of the suffix, between the prefix and the text: the attention mask hides the padding and
position ids come from the mask, so each row computes exactly what it would alone.

Decoding is our own loop rather than `model.generate`, for three measured or needed reasons
(benchmarks/RESULTS.md):
- the KV cache is a preallocated buffer per layer, written in place (kv_cache.BufferLayer);
- rows that reached their EOS leave the batch (their cache rows are dropped), instead of being
  computed until the longest row finishes;
- sampling draws each row from its own generator, seeded by the row's result key, so a sampled
  result does not depend on which other prompts share its batch: a resumed or extended run samples
  what an uninterrupted one would have. Greedy decoding is a plain argmax, identical to unbatched
  `model.generate`.

Batching, the result cache and sharding over processes are the shared driver's (base.BatchedEngine).
"""

from __future__ import annotations

import copy

import torch
from transformers import DynamicCache, TopPLogitsWarper
from transformers.cache_utils import DynamicLayer

from .. import work
from .base import BatchedEngine, Decoding, ResultCache
from .kv_cache import buffer_cache

# Bumped when the sampler changes what a seeded sampled result is, so the cache never mixes them.
SAMPLER_VERSION = 2


class Engine(BatchedEngine):
    """Runs one model over many `prefix + suffix` prompts, batched, cached and resumable."""

    prefill_tokens = 2048  # tokens per forward pass when a batch's prompts are computed

    def __init__(self, model, tokenizer, fingerprint: str, batch_size: int, cache: ResultCache | None = None,
                 add_special_tokens: bool = True):
        super().__init__(tokenizer, fingerprint, batch_size, cache, add_special_tokens)
        self.model = model
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

    def _computing(self):
        return torch.inference_mode()

    def _encode_prefix(self, prefix: str):
        """The prefix's ids and its one-row KV cache (None without a prefix)."""
        ids = self.tok(prefix, add_special_tokens=self.add_special_tokens)["input_ids"] if prefix else []
        if not ids:
            return [], None
        out = self.model.get_decoder()(torch.tensor([ids], device=self.device), use_cache=True)  # no logits needed
        self.stats["prompt_tokens_computed"] += len(ids)
        work.add(forward=len(ids), forward_padded=len(ids))
        return ids, out.past_key_values

    def _new_cache(self, prefix_kv, batch: int, capacity: int):
        """A cache for `batch` rows holding the shared prefix (if any), with room for `capacity` tokens."""
        if self._buffer_cache:
            return buffer_cache(self._num_layers, capacity, prefix_kv, batch)
        if prefix_kv is None:
            return DynamicCache(config=self.model.config)
        kv = copy.deepcopy(prefix_kv)
        kv.batch_repeat_interleave(batch)
        return kv

    def _prefill(self, prefix, suffix_ids: list[list[int]], extra_capacity: int, hidden: bool = False):
        """Run `prefix | pad | suffix` for a batch, the prefix coming from its shared cache.

        Returns the logits after each prompt, the cache, the attention mask and each row's last position.
        With `hidden`, the first item is (logits, last-layer hidden state) after each prompt.
        """
        prefix_ids, prefix_kv = prefix
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
        # The decoder runs the slices and the output layer only the last position, as a plain matrix
        # product: the model's own head on a `[:, -1:]` slice broadcast the 49k-wide weight to every
        # row and copied it, once per slice (3.6 GB at 64 rows; half of an IFEval batch's time).
        body, head = self.model.get_decoder(), self.model.get_output_embeddings()
        step, start = max(1, self.prefill_tokens // len(rows)), len(prefix_ids)
        for i in range(0, width, step):
            j = min(width, i + step)
            out = body(input_ids=input_ids[:, i:j], attention_mask=attention_mask[:, : start + j],
                       position_ids=position_ids[:, i:j], past_key_values=cache, use_cache=True)
        last = out.last_hidden_state[:, -1].contiguous()
        logits = head(last)
        if hidden:
            logits = (logits, last)
        return logits, cache, attention_mask, position_ids[:, -1]

    def generate(self, prefix: str, suffixes: list[str], decoding: Decoding, desc: str = "generate") -> list[str]:
        """Continue each `prefix + suffix`; each sequence stops at its own EOS."""
        params = decoding.as_dict()
        if decoding.do_sample:
            params["sampler"] = SAMPLER_VERSION

        def compute(shared, batch):
            tokens = self._decode(shared, batch, decoding)
            return [self.tok.decode(t, skip_special_tokens=True).strip() for t in tokens]

        return self._run("generate", params, prefix, suffixes, compute, desc, "generated_tokens")

    def _decode(self, prefix, batch, decoding: Decoding) -> list[list[int]]:
        """Token ids written after each prompt of the batch, up to (not including) its EOS."""
        logits, cache, mask, position = self._prefill(prefix, [ids for _, ids in batch], decoding.max_new_tokens)
        eos = set(self.eos_ids)
        out: list[list[int]] = [[] for _ in batch]
        rows = list(range(len(batch)))  # which result each row of the tensors belongs to
        finished: set[int] = set()
        generators = top_p = None
        if decoding.do_sample:  # per row, seeded by the row's key (which includes decoding.seed)
            generators = [torch.Generator(device=self.device).manual_seed(int(k[:15], 16)) for k, _ in batch]
            if decoding.top_p < 1.0:
                top_p = TopPLogitsWarper(decoding.top_p)  # nucleus filtering; keeps at least one token
        for step in range(decoding.max_new_tokens):
            if decoding.do_sample:
                scores = logits.float() / decoding.temperature
                if top_p is not None:
                    scores = top_p(None, scores)
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

        def compute(shared, batch):
            logits, _, _, _ = self._prefill(shared, [ids for _, ids in batch], 0)
            return torch.softmax(logits.float(), dim=-1)[:, candidates].tolist()

        return self._run("next_token_probs", {"candidates": candidates}, prefix, suffixes, compute, desc,
                         "prompt_tokens_computed")

    def next_token_features(self, prefix: str, suffixes: list[str], candidates: list[int],
                            desc: str = "score") -> list[dict]:
        """For each `prefix + suffix`: log-probabilities of the candidate tokens next (`logprobs`) and the
        model's last-layer hidden state there (`hidden`), from one forward pass."""

        def compute(shared, batch):
            (logits, state), _, _, _ = self._prefill(shared, [ids for _, ids in batch], 0, hidden=True)
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

        def compute(shared, batch):
            return self._score_continuations(shared, [pc for _, pc in batch])

        items = [p + sep + c for p, c in zip(prompts, continuations)]
        return self._run("continuation_logprobs", {}, prefix, items, compute, desc, "prompt_tokens_computed",
                         encode=encode)

    def _score_continuations(self, prefix, rows: list[tuple[list[int], list[int]]]) -> list[dict]:
        """Right-padded batch of `prompt + continuation` after the shared prefix; log p of the continuation."""
        prefix_ids, prefix_kv = prefix
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
