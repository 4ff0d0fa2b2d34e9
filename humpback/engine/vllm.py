"""vLLM as an optional generation engine (`engine: vllm`), behind the interface of the native `Engine`.

`VllmEngine` has the methods the stages call on the native `Engine` (`generate`, `next_token_probs`,
`next_token_features`, `continuation_logprobs`, `report`, `tok`, `stats`, `add_special_tokens`) and runs on
the same driver and result cache (base.BatchedEngine, `ResultCache.default()`, `result_key`, `batch_key`)
with the engine named in the fingerprint, so vLLM's and the native engine's results never mix.

- vLLM reads a Hugging Face safetensors directory: the native engine's weights, the base model with the
  LoRA adapter merged in at the run's dtype (`merged_model_dir`), written once into the humpback cache
  directory under the model fingerprint. Merging beats vLLM's LoRARequest, 6x slower as issue 11 measured it.
- Prompts go to vLLM as token ids, encoded as the native engine encodes them (the prefix with
  `add_special_tokens`, each suffix without), so both engines see the same tokens.
- Greedy decoding stops at the native engine's EOS ids; outputs are decoded by our tokenizer, the
  same way (`skip_special_tokens`, stripped).
- `next_token_probs` reads the candidate tokens' probabilities from vLLM's `logprob_token_ids`
  (exact log-softmax over the full vocabulary, in float32); `continuation_logprobs` from
  `prompt_logprobs=0`.
- The shared prefix (the rater's few-shot block, a template header) is served by vLLM's prefix cache
  (`enable_prefix_caching=True`); `stats["prompt_tokens_computed"]` counts the prompt tokens that were
  not served from it.
- Results are committed to the cache chunk by chunk (`chunk_size` prompts per `LLM.generate` call), so a
  killed run loses at most the chunk in flight. Chunks are cut from the full item list in its order (vLLM
  schedules its own batches) and cached under `batch_key`, so a warm cache gives a cold run's results.
- The last-layer hidden state (`curation.scoring: probe`) is not returned by vLLM's generate API. With
  `hidden_state=True` (the default), `next_token_features` recovers it from the full next-token
  log-probability vector (output_head.OutputHead). Where that cannot be done, or with
  `hidden_state=False`, reading `"hidden"` raises an error naming `curation.scoring: probe`.

vLLM starts its engine in a spawned process: scripts that open a `VllmEngine` need the
`if __name__ == "__main__":` guard. Install it with `scripts/setup-vllm`.
"""

from __future__ import annotations

import math
import sys
import time

from .. import HumpbackError
from .base import BatchedEngine, Decoding, ResultCache
from .output_head import PROBE_HINT, FeaturesWithoutHidden, OutputHead
from .vllm_setup import cpu_env, import_vllm, merged_model_dir, vllm_fingerprint


class VllmEngine(BatchedEngine):
    """Runs one model in vLLM over many `prefix + suffix` prompts, cached and resumable; the interface of
    the native `Engine`."""

    longest_first = False  # vLLM schedules its own batches: chunks keep the item order
    shards = False  # one process: vLLM batches and parallelises by itself (open_engine refuses more)

    def __init__(self, llm, tokenizer, fingerprint: str, batch_size: int, cache: ResultCache | None = None,
                 add_special_tokens: bool = True, eos_ids: list[int] | None = None, chunk_size: int | None = None,
                 startup_seconds: float = 0.0, head: "OutputHead | str | None" = None):
        super().__init__(tokenizer, fingerprint, batch_size, cache, add_special_tokens, startup_seconds=startup_seconds)
        self.llm = llm
        self.chunk_size = chunk_size or max(64, 4 * batch_size)
        self.eos_ids = sorted(set(eos_ids or [tokenizer.eos_token_id]) - {None})
        # OutputHead: next_token_features recovers the hidden state; a string: why it cannot
        self.head = head if head is not None else "the engine was opened with hidden_state=False"

    @property
    def run_batch_size(self) -> int:
        return self.chunk_size  # `batch_size` is what vLLM runs at once (max_num_seqs)

    def _through_vllm(self, sampling, parse):
        """The driver's `compute`: a chunk's prompts through one `LLM.generate` call.

        `sampling(key, ids)`: the SamplingParams of one prompt; `parse(output, ids, n_prefix)`: its result.
        """
        vllm = import_vllm()

        def compute(prefix_ids, chunk):
            requests, params_ = [], []
            for k, e in chunk:
                ids = prefix_ids + (e[0] + e[1] if isinstance(e, tuple) else e)
                requests.append(vllm.inputs.TokensPrompt(prompt_token_ids=ids))
                params_.append(sampling(k, e))
            outputs = self.llm.generate(requests, params_, use_tqdm=False)
            results = []
            for (k, e), out in zip(chunk, outputs):
                n = len(out.prompt_token_ids)
                self.stats["prompt_tokens_full"] += n
                self.stats["prompt_tokens_computed"] += n - (out.num_cached_tokens or 0)
                results.append(parse(out, e, len(prefix_ids)))
            return results

        return compute

    # -- the interface of the native Engine ----------------------------------------------------------

    def generate(self, prefix: str, suffixes: list[str], decoding: Decoding, desc: str = "generate") -> list[str]:
        """Continue each `prefix + suffix`; each sequence stops at its own EOS. Greedy decoding is vLLM's
        argmax; sampled decoding is seeded per prompt by its result key (reproducible, but not the native
        engine's draws)."""
        vllm = import_vllm()
        params = decoding.as_dict()
        if decoding.do_sample:
            params["sampler"] = "vllm"
        eos = set(self.eos_ids)

        def sampling(key, ids):
            kw = dict(max_tokens=decoding.max_new_tokens, stop_token_ids=self.eos_ids, detokenize=False,
                      skip_special_tokens=True)
            if decoding.do_sample:
                kw.update(temperature=decoding.temperature, top_p=decoding.top_p, seed=int(key[:15], 16))
            else:
                kw.update(temperature=0.0)
            return vllm.SamplingParams(**kw)

        def parse(out, ids, n_prefix):
            tokens = list(out.outputs[0].token_ids)
            self.stats["generated_tokens"] += len(tokens)
            if tokens and tokens[-1] in eos:
                tokens = tokens[:-1]
            return self.tok.decode(tokens, skip_special_tokens=True).strip()

        return self._run("generate", params, prefix, suffixes, self._through_vllm(sampling, parse), desc)

    def _candidate_logprobs(self, out, candidates: list[int]) -> list[float]:
        found = out.outputs[0].logprobs[0]
        return [found[c].logprob for c in candidates]

    def next_token_probs(self, prefix: str, suffixes: list[str], candidates: list[int],
                         desc: str = "score") -> list[list[float]]:
        """Probability of each candidate token right after each `prefix + suffix` (vLLM's logprob_token_ids)."""
        vllm = import_vllm()
        sp = vllm.SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=list(candidates), detokenize=False)

        def parse(out, ids, n_prefix):
            self.stats["generated_tokens"] += 1
            return [math.exp(lp) for lp in self._candidate_logprobs(out, candidates)]

        return self._run("next_token_probs", {"candidates": candidates}, prefix, suffixes,
                         self._through_vllm(lambda k, e: sp, parse), desc)

    @property
    def supports_hidden_state(self) -> bool:
        return isinstance(self.head, OutputHead)

    def next_token_features(self, prefix: str, suffixes: list[str], candidates: list[int],
                            desc: str = "score") -> list[dict]:
        """For each `prefix + suffix`: the candidate tokens' log-probabilities (`logprobs`) and the last-layer
        hidden state (`hidden`), recovered from the full log-probability vector (see OutputHead). Without a
        recoverable head, the records have `logprobs` only, and reading `hidden` raises."""
        vllm = import_vllm()
        head = self.head if isinstance(self.head, OutputHead) else None
        if head is None:
            sp = vllm.SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=list(candidates),
                                     detokenize=False)
        else:
            sp = vllm.SamplingParams(max_tokens=1, temperature=0.0, logprobs=-1, flat_logprobs=True, detokenize=False)

        def parse(out, ids, n_prefix):
            self.stats["generated_tokens"] += 1
            if head is None:
                return {"logprobs": self._candidate_logprobs(out, candidates)}
            import torch

            flat = out.outputs[0].logprobs
            lo, hi = flat.start_indices[0], flat.end_indices[0]
            full = torch.full((head.vocab,), float("nan"), dtype=torch.float64)
            full[torch.tensor(flat.token_ids[lo:hi])] = torch.tensor(flat.logprobs[lo:hi], dtype=torch.float64)
            if torch.isnan(full).any():
                raise RuntimeError("vLLM returned fewer log-probabilities than the vocabulary")
            return {"logprobs": full[candidates].tolist(), "hidden": head.recover(full)}

        params = {"candidates": candidates, "hidden": "recovered" if head else None}
        feats = self._run("next_token_features", params, prefix, suffixes, self._through_vllm(lambda k, e: sp, parse),
                          desc)
        if head is not None:
            return feats
        out = []
        for f in feats:
            f = FeaturesWithoutHidden(f)
            f.why = f"{PROBE_HINT} (this engine: {self.head})"
            out.append(f)
        return out

    def continuation_logprobs(self, prefix: str, prompts: list[str], continuations: list[str],
                              desc: str = "likelihood") -> list[dict]:
        """Summed log-probability (`logprob`) and token count (`tokens`) of each continuation after
        `prefix + prompt` (vLLM's prompt_logprobs; such requests bypass the prefix cache)."""
        vllm = import_vllm()
        sep = "\x00"
        sp = vllm.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)

        def encode(item):
            prompt, cont = item.split(sep, 1)
            p = self.tok(prompt, add_special_tokens=False)["input_ids"]
            c = self.tok(cont, add_special_tokens=False)["input_ids"]
            if c and not p:
                raise ValueError("continuation_logprobs needs a non-empty prompt after the prefix")
            return p, c

        def parse(out, pc, n_prefix):
            p, c = pc
            if not c:
                return {"logprob": 0.0, "tokens": 0}
            ids = out.prompt_token_ids
            first = n_prefix + len(p)
            lps = out.prompt_logprobs
            total = sum(lps[j][ids[j]].logprob for j in range(first, first + len(c)))
            return {"logprob": float(total), "tokens": len(c)}

        items = [p + sep + c for p, c in zip(prompts, continuations)]
        return self._run("continuation_logprobs", {}, prefix, items, self._through_vllm(lambda k, e: sp, parse), desc,
                         encode=encode)

    def report(self, name: str) -> None:
        s = self.stats
        print(f"{name} (vllm): {self._counts()} (the rest from the prefix cache); "
              f"{s['generated_tokens']} tokens generated in {s['seconds']:.1f}s "
              f"({s['generated_tokens'] / max(s['seconds'], 1e-9):.1f} tok/s generated); "
              f"engine start-up {s['startup_seconds']:.1f}s", file=sys.stderr)

    def close(self) -> None:
        """Stop vLLM's engine processes now (they also stop when this process exits)."""
        llm, self.llm = self.llm, None
        if llm is not None:
            try:
                llm.llm_engine.engine_core.shutdown()
            except Exception:  # already down
                pass


def open_vllm_engine(ref: str, model_params, batch_size: int, adapter: str | None = None, chat: bool = False,
                     enforce_eager: bool = True, max_model_len: int | None = None, hidden_state: bool = True,
                     **llm_kwargs) -> VllmEngine:
    """A vLLM engine over the model `ref` (with a LoRA `adapter` merged), at `model_params`' dtype, with the
    project-wide result cache; mirrors `engine.open_engine`. `batch_size` is the most sequences vLLM
    runs at once (`max_num_seqs`). `enforce_eager`: no torch.compile (measured faster for a whole stage on
    CPU, start-up included: benchmarks/bench_vllm.py). `hidden_state`: next_token_features also returns
    the last-layer hidden state (recovered from the full log-probabilities; for curation.scoring: probe)."""
    from .. import models

    m = model_params
    if m.load_in_4bit:
        raise HumpbackError("engine: vllm does not load 4-bit (bitsandbytes) models on CPU: set model.load_in_4bit: false "
                            "or use engine: native")
    dtype = models.resolve_dtype(m.dtype)  # vLLM's own "auto" would mean the checkpoint's dtype
    cpu_env()
    vllm = import_vllm()
    tok = models.load_tokenizer(adapter or ref)
    path = merged_model_dir(ref, adapter, dtype)
    from transformers import GenerationConfig

    try:  # the native engine's EOS ids: the tokenizer's and the generation config's
        configured = GenerationConfig.from_pretrained(path).eos_token_id
    except OSError:
        configured = None
    configured = configured if isinstance(configured, list) else [configured]
    eos_ids = sorted({tok.eos_token_id, *configured} - {None})
    start = time.perf_counter()
    kwargs = dict(tokenizer=path, dtype=dtype, enforce_eager=enforce_eager, enable_prefix_caching=True,
                  seed=0, generation_config="vllm", max_num_seqs=max(1, batch_size))
    if hidden_state:
        kwargs["max_logprobs"] = -1  # the full vector, from which next_token_features recovers the hidden state
    if max_model_len:
        kwargs["max_model_len"] = max_model_len
    kwargs.update(llm_kwargs)
    llm = vllm.LLM(path, **kwargs)
    head = OutputHead.from_model_dir(path) if hidden_state else None
    if isinstance(head, str):
        head = f"the hidden state of {ref} cannot be recovered: {head}"
    startup = time.perf_counter() - start
    return VllmEngine(llm, tok, vllm_fingerprint(ref, adapter, dtype, enforce_eager), batch_size,
                      ResultCache.default(), add_special_tokens=not (chat and tok.chat_template), eos_ids=eos_ids,
                      startup_seconds=startup, head=head)
