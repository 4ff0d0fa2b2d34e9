"""vLLM as an optional generation engine (`engine: vllm`), behind the interface of `generation.Engine`.

`VllmEngine` has the methods the stages call on `generation.Engine` (`generate`, `next_token_probs`,
`next_token_features`, `continuation_logprobs`, `report`, `tok`, `stats`, `add_special_tokens`) and
uses the same result cache (`generation.ResultCache.default()`, `generation.result_key`,
`generation.batch_key`) with the engine named in the fingerprint, so vLLM's and the native engine's
results never mix.

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
  killed run loses at most the chunk in flight. Chunks are formed from the full item list and cached
  under `batch_key`, as the native engine does, so a warm cache gives a cold run's results.
- The last-layer hidden state (`curation.scoring: probe`) is not returned by vLLM's generate API. With
  `hidden_state=True` (the default), `next_token_features` recovers it from the full next-token
  log-probability vector: for a linear output layer without bias, log p = W h - logsumexp, so h is the
  least-squares solution of [W | 1] [h; c] = log p (exact up to rounding: vocabulary >> hidden size).
  Where that does not hold (a soft-capped or scaled output layer), or with `hidden_state=False`, reading
  `"hidden"` raises an error naming `curation.scoring: probe`.

vLLM starts its engine in a spawned process: scripts that open a `VllmEngine` need the
`if __name__ == "__main__":` guard. Install it with `scripts/setup-vllm`.
"""

from __future__ import annotations

import math
import os
import sys
import time

from . import HumpbackError
from .generation import Decoding, ResultCache, batch_key, result_key

INSTALL_HINT = "engine: vllm needs vLLM: run scripts/setup-vllm"
PROBE_HINT = ("curation.scoring: probe reads the rater's last hidden state, which this engine: vllm cannot give "
              "(vLLM returns tokens and log-probabilities only): use engine: native for the probe, "
              "or scoring expected / calibrated / generate with vLLM")


def import_vllm():
    try:
        import vllm
    except ImportError as e:
        raise HumpbackError(f"{INSTALL_HINT} ({e})") from None
    return vllm


def require_hidden_state(scoring: str, engine) -> None:
    """Fail before any computation when `scoring` needs a hidden state that `engine` cannot give."""
    if scoring == "probe" and getattr(engine, "supports_hidden_state", True) is False:
        raise HumpbackError(f"{PROBE_HINT} (this engine: {engine.head})")


class _Features(dict):
    """A `next_token_features` record without the hidden state: reading `"hidden"` (directly, or by
    copying the record with `{**record}`) raises the error that says why."""

    why = PROBE_HINT

    def keys(self):
        return [*super().keys(), "hidden"]

    def __iter__(self):
        return iter(self.keys())

    def __getitem__(self, key):
        if key == "hidden":
            raise HumpbackError(self.why)
        return super().__getitem__(key)


class OutputHead:
    """Recovers the last-layer hidden state from the full next-token log-probability vector, for an output
    layer `logits = W h` (no bias, no scaling or soft-capping): log p = W h - c, so [W | 1] [h; -c] = log p,
    solved by least squares (normal equations in float64, factored once)."""

    def __init__(self, weight):
        import torch

        a = torch.cat([weight.double(), weight.new_ones(weight.shape[0], 1, dtype=torch.float64)], dim=1)
        self.a = a
        self.chol = torch.linalg.cholesky(a.T @ a)
        self.vocab, self.hidden = weight.shape

    @classmethod
    def from_model_dir(cls, path: str) -> "OutputHead | str":
        """The head of the model in `path`, or why its hidden state cannot be recovered."""
        import glob
        import json

        from safetensors import safe_open

        with open(os.path.join(path, "config.json")) as f:
            config = json.load(f)
        config = {**config, **config.get("text_config", {})}
        for key in ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale"):
            if config.get(key) not in (None, 1, 1.0):
                return f"its output layer is scaled or soft-capped ({key})"
        names = ["lm_head.weight"] if not config.get("tie_word_embeddings") else []
        names += ["model.embed_tokens.weight", "lm_head.weight"]
        for file in sorted(glob.glob(os.path.join(path, "*.safetensors"))):
            with safe_open(file, "pt") as st:
                keys = set(st.keys())
                if "lm_head.bias" in keys:
                    return "its output layer has a bias"
                for name in names:
                    if name in keys:
                        return cls(st.get_tensor(name))
        return "no output layer weight found in its safetensors"

    def recover(self, logprobs) -> list[float]:
        import torch

        rhs = self.a.T @ torch.as_tensor(logprobs, dtype=torch.float64)
        solution = torch.cholesky_solve(rhs[:, None], self.chol)[:, 0]
        return solution[: self.hidden].float().tolist()


def _cpu_env() -> None:
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

    from . import models

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


class VllmEngine:
    """Runs one model in vLLM over many `prefix + suffix` prompts, cached and resumable; the interface of
    `generation.Engine`."""

    def __init__(self, llm, tokenizer, fingerprint: str, batch_size: int, cache: ResultCache | None = None,
                 add_special_tokens: bool = True, eos_ids: list[int] | None = None, chunk_size: int | None = None,
                 startup_seconds: float = 0.0, head: "OutputHead | str | None" = None):
        self.llm = llm
        self.tok = tokenizer
        self.fingerprint = fingerprint
        self.batch_size = batch_size
        self.chunk_size = chunk_size or max(64, 4 * batch_size)
        self.cache = cache
        self.add_special_tokens = add_special_tokens
        self.eos_ids = sorted(set(eos_ids or [tokenizer.eos_token_id]) - {None})
        # OutputHead: next_token_features recovers the hidden state; a string: why it cannot
        self.head = head if head is not None else "the engine was opened with hidden_state=False"
        self.stats = {"items": 0, "cached": 0, "computed": 0, "prompt_tokens_computed": 0,
                      "prompt_tokens_full": 0, "generated_tokens": 0, "decode_tokens_computed": 0,
                      "seconds": 0.0, "cpu_seconds": 0.0, "startup_seconds": startup_seconds}

    # -- the shared driver -------------------------------------------------------------------------

    def _prefix_ids(self, prefix: str) -> list[int]:
        return self.tok(prefix, add_special_tokens=self.add_special_tokens)["input_ids"] if prefix else []

    def _run(self, kind: str, params: dict, prefix: str, suffixes: list[str], sampling, parse, desc: str,
             encode=None) -> list:
        """Cache look-up, then the missing chunks through vLLM, each committed to the cache as it completes.

        `sampling(key, ids)`: the SamplingParams of one prompt; `parse(output, ids, n_prefix)`: its result.
        """
        from tqdm.auto import tqdm

        vllm = import_vllm()
        keys = [result_key(kind, self.fingerprint, params, prefix + s) for s in suffixes]
        unique = dict(zip(keys, suffixes))
        encode = encode or (lambda s: self.tok(s, add_special_tokens=False)["input_ids"])
        items = list(unique.items())
        chunks = [items[i : i + self.chunk_size] for i in range(0, len(items), self.chunk_size)]
        stored = [[batch_key(c, k) for k, _ in c] for c in chunks]
        done = self.cache.get_many([s for ss in stored for s in ss]) if self.cache else {}
        todo = [i for i, ss in enumerate(stored) if any(s not in done for s in ss)]
        self.stats["items"] += len(suffixes)
        self.stats["cached"] += len(items) - sum(len(chunks[i]) for i in todo)
        if todo:
            start, cpu0 = time.perf_counter(), time.process_time()
            prefix_ids = self._prefix_ids(prefix)
            with tqdm(total=sum(len(chunks[i]) for i in todo), desc=desc, unit="ex", dynamic_ncols=True) as bar:
                for i in todo:
                    encoded = [(k, encode(s)) for k, s in chunks[i]]
                    requests, params_ = [], []
                    for k, e in encoded:
                        ids = prefix_ids + (e[0] + e[1] if isinstance(e, tuple) else e)
                        requests.append(vllm.inputs.TokensPrompt(prompt_token_ids=ids))
                        params_.append(sampling(k, e))
                    outputs = self.llm.generate(requests, params_, use_tqdm=False)
                    results = []
                    for (k, e), out in zip(encoded, outputs):
                        n = len(out.prompt_token_ids)
                        self.stats["prompt_tokens_full"] += n
                        self.stats["prompt_tokens_computed"] += n - (out.num_cached_tokens or 0)
                        results.append(parse(out, e, len(prefix_ids)))
                    fresh = dict(zip(stored[i], results))
                    if self.cache:
                        self.cache.put_many(fresh)  # committed: a kill from here on loses nothing
                    done.update(fresh)
                    self.stats["computed"] += len(chunks[i])
                    bar.update(len(chunks[i]))
            self.stats["seconds"] += time.perf_counter() - start
            self.stats["cpu_seconds"] += time.process_time() - cpu0  # this process only (vLLM computes in its own)
        by_item = {k: done[s] for ss, c in zip(stored, chunks) for s, (k, _) in zip(ss, c)}
        return [by_item[k] for k in keys]

    # -- the interface of generation.Engine ----------------------------------------------------------

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

        return self._run("generate", params, prefix, suffixes, sampling, parse, desc)

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

        return self._run("next_token_probs", {"candidates": candidates}, prefix, suffixes, lambda k, e: sp, parse, desc)

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
        feats = self._run("next_token_features", params, prefix, suffixes, lambda k, e: sp, parse, desc)
        if head is not None:
            return feats
        out = []
        for f in feats:
            f = _Features(f)
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
        return self._run("continuation_logprobs", {}, prefix, items, lambda k, e: sp, parse, desc, encode=encode)

    def report(self, name: str) -> None:
        s = self.stats
        print(f"{name} (vllm): {s['items']} items ({s['cached']} from cache, {s['computed']} computed); "
              f"prompt tokens computed {s['prompt_tokens_computed']} of {s['prompt_tokens_full']} in full prompts "
              f"(the rest from the prefix cache); {s['generated_tokens']} tokens generated in {s['seconds']:.1f}s "
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


def vllm_fingerprint(ref: str, adapter: str | None, dtype: str, enforce_eager: bool) -> str:
    """The model fingerprint of the native engine, with the engine, its version and mode named in it."""
    from . import models

    vllm = import_vllm()
    return f"vllm-{vllm.__version__}-{'eager' if enforce_eager else 'compiled'}-" + models.fingerprint(
        ref, adapter=adapter, dtype=dtype)


def open_vllm_engine(ref: str, model_params, batch_size: int, adapter: str | None = None, chat: bool = False,
                     enforce_eager: bool = True, max_model_len: int | None = None, hidden_state: bool = True,
                     **llm_kwargs) -> VllmEngine:
    """A vLLM engine over the model `ref` (with a LoRA `adapter` merged), at `model_params`' dtype, with the
    project-wide result cache; mirrors `generation.open_engine`. `batch_size` is the most sequences vLLM
    runs at once (`max_num_seqs`). `enforce_eager`: no torch.compile (measured faster for a whole stage on
    CPU, start-up included: benchmarks/bench_vllm.py). `hidden_state`: next_token_features also returns
    the last-layer hidden state (recovered from the full log-probabilities; for curation.scoring: probe)."""
    from . import models

    m = model_params
    if m.load_in_4bit:
        raise HumpbackError("engine: vllm does not load 4-bit (bitsandbytes) models on CPU: set model.load_in_4bit: false "
                            "or use engine: native")
    dtype = models.resolve_dtype(m.dtype)  # vLLM's own "auto" would mean the checkpoint's dtype
    _cpu_env()
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
