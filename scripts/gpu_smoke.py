"""The GPU smoke test's steps: the tiny profile's training, generation and rating, and 4-bit loading.

`scripts/gpu-smoke` runs this with `--device cuda` on a machine with a CUDA GPU (after installing carried
wheels, see that script); `--device cpu` runs the very same steps on the CPU (tests/test_gpu_smoke.py),
so the code path the GPU run takes is tested everywhere. All steps use the tiny random models of the
test suite (tests/tiny.py), so they take seconds, not minutes:

- build      a tiny random Llama and its tokenizer (tests/tiny.py), hidden size 64 (bitsandbytes
             quantizes blocks of 64 values), and the tiny profile's params (tiny.tiny_params)
- train      inverse SFT with the tiny profile's inverse_sft params: humpback.training.train_lora
- generate   humpback.engine.open_engine with that adapter writes instructions, greedy and sampled
- rate       the tiny profile's rater (curation.scoring) rates those pairs: humpback.curation.rater.Rater
- probe      the default profile's scoring: the probe rater fit and measured on part of data/rater_check
- 4bit       humpback.models.load_model(load_in_4bit=True): nf4 layers, a forward pass, engine decoding
- qlora      one QLoRA training step (train_lora with model.load_in_4bit)

Each step prints one line to stdout, `gpu-smoke: <step> <ok|FAILED|skipped>: <result> (<seconds>s)`,
then a summary line; the exit status is 1 if any step failed. Library output goes to stderr, and so
does the traceback of a failed step. The 4-bit steps are skipped, not failed, where bitsandbytes is not
installed. `--json PATH` also writes the results as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = ("build", "train", "generate", "rate", "probe", "4bit", "qlora")
NEEDS = {"train": "build", "generate": "train", "rate": "generate", "probe": "build", "4bit": "build",
         "qlora": "build"}


class Skip(Exception):
    """A step that cannot run here (its library is not installed): reported as skipped, not failed."""


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


class Smoke:
    def __init__(self, device: str, work: str, dtype: str | None, out=None):
        self.device, self.work, self.dtype = device, work, dtype
        self.out = out or sys.stdout  # where the step and summary lines go
        self.results: list[dict] = []
        self.state: dict = {}

    # ----------------------------------------------------------------------------------------- driver
    def run(self, steps: list[str]) -> int:
        start = time.perf_counter()
        for name in steps:
            need = NEEDS.get(name)
            if need and not any(r["step"] == need and r["status"] == "ok" for r in self.results):
                self._report(name, "FAILED", f"not run: step {need} did not succeed", 0.0)
                continue
            t0 = time.perf_counter()
            try:
                detail = getattr(self, "step_" + name)()
                status = "ok"
            except Skip as e:
                status, detail = "skipped", str(e)
            except Exception as e:  # noqa: BLE001 - every failure is a result, and the next steps still run
                traceback.print_exc(file=sys.stderr)
                status, detail = "FAILED", _first_line(e)
            self._report(name, status, detail, time.perf_counter() - t0)
        counts = {s: sum(r["status"] == s for r in self.results) for s in ("ok", "FAILED", "skipped")}
        total = time.perf_counter() - start
        verdict = "passed" if not counts["FAILED"] else "FAILED"
        print(f"gpu-smoke: {verdict}: {counts['ok']} ok, {counts['FAILED']} failed, {counts['skipped']} skipped "
              f"in {total:.1f}s on {self.device_name()}", file=self.out, flush=True)
        self.summary = {"verdict": verdict, **counts, "seconds": round(total, 1), "device": self.device_name()}
        return 1 if counts["FAILED"] else 0

    def _report(self, name: str, status: str, detail: str, seconds: float) -> None:
        self.results.append({"step": name, "status": status, "detail": detail, "seconds": round(seconds, 2)})
        print(f"gpu-smoke: {name} {status}: {detail} ({seconds:.1f}s)", file=self.out, flush=True)

    def device_name(self) -> str:
        import torch

        if self.device == "cuda":
            return f"cuda ({torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda})"
        return f"cpu (torch {torch.__version__})"

    def check_device(self, tensor_or_module, what: str) -> str:
        """The device `what` is on, which must be the one asked for."""
        import torch

        t = tensor_or_module if isinstance(tensor_or_module, torch.Tensor) else next(tensor_or_module.parameters())
        if t.device.type != self.device:
            raise AssertionError(f"{what} is on {t.device}, not {self.device}")
        return str(t.device)

    # ------------------------------------------------------------------------------------------ steps
    def step_build(self) -> str:
        import tiny  # tests/tiny.py: the test suite's tiny models and profile
        import yaml

        from humpback import formats
        from humpback.config import load_params

        model = tiny.build_model(os.path.join(self.work, "tiny-model"), ROOT, hidden=64)
        overrides = {"model.dtype": self.dtype} if self.dtype else {}
        path = os.path.join(self.work, "params.yaml")  # the tiny profile, as the tests' workspaces have it
        with open(path, "w", encoding="utf-8") as f:
            yaml.safe_dump(tiny.tiny_params(ROOT, model, **overrides), f, sort_keys=False)
        params = load_params(path)
        seed = formats.parse_guanaco(formats.read_jsonl(os.path.join(ROOT, params.data.guanaco_path)),
                                     formats.ParseReport())
        lima = formats.parse_lima(formats.read_jsonl(os.path.join(ROOT, params.data.lima_path)),
                                  formats.ParseReport())
        self.state.update(model=model, params=params, seed=seed, lima=lima)
        return f"tiny Llama (hidden 64), tiny profile (model.dtype {params.model.dtype}); {versions()}"

    def step_train(self) -> str:
        from humpback import models, prompts
        from humpback.training import train_lora

        params, model = self.state["params"], self.state["model"]
        p = params.inverse_sft
        tok = models.load_tokenizer(model)
        n = p.eval_size + max(p.max_steps, 1) * p.per_device_train_batch_size
        examples = [prompts.backward_example(x, tok, p.max_response_tokens) for x in self.state["seed"][:n]]
        out = os.path.join(self.work, "backward")
        metrics = train_lora(params.model, p, examples[p.eval_size:], examples[: p.eval_size], out,
                             os.path.join(self.work, "dvclive", "inverse_sft"), "inverse_sft")
        self._check_training(metrics, p.max_steps, out)
        self.state["adapter"] = out
        return (f"train_loss {metrics['train_loss']}, eval_loss {metrics['eval_loss']}, {metrics['steps']} steps, "
                f"{self._trained_on()}")

    def step_generate(self) -> str:
        from humpback import prompts
        from humpback.engine import Decoding, open_engine

        params, model = self.state["params"], self.state["model"]
        a = params.augment
        engine = open_engine(model, params.model, a.batch_size, adapter=self.state["adapter"])
        where = self.check_device(engine.model, "the engine's model")
        responses = [r["response"] for r in self.state["lima"][:6]]
        suffixes = [prompts.backward_suffix(r, engine.tok, params.inverse_sft.max_response_tokens) for r in responses]
        greedy = engine.generate(prompts.BACKWARD_PREFIX, suffixes,
                                 Decoding(max_new_tokens=a.max_new_tokens), desc="generate")
        sampled = engine.generate(prompts.BACKWARD_PREFIX, suffixes[:4],
                                  Decoding(max_new_tokens=a.max_new_tokens, do_sample=True, temperature=0.7,
                                           top_p=0.9, seed=0), desc="generate (sampled)")
        # A sampled row draws from its own generator, seeded by its key: the same result in another batch.
        again = engine.generate(prompts.BACKWARD_PREFIX, suffixes[:1],
                                Decoding(max_new_tokens=a.max_new_tokens, do_sample=True, temperature=0.7,
                                         top_p=0.9, seed=0), desc="generate (sampled, alone)")
        if len(greedy) != len(suffixes) or not all(isinstance(g, str) for g in greedy + sampled):
            raise AssertionError(f"expected {len(suffixes)} instructions, got {greedy!r}")
        if not any(greedy):
            raise AssertionError("every generated instruction is empty")
        if engine.stats["generated_tokens"] == 0:
            raise AssertionError("no token was generated")
        self.state["pairs"] = [{"id": f"smoke-{i}", "instruction": ins or "(empty)", "response": r}
                               for i, (ins, r) in enumerate(zip(greedy, responses))]
        del engine
        self._free()
        words = sum(len(g.split()) for g in greedy) / len(greedy)
        return (f"{len(greedy)} greedy + {len(sampled)} sampled instructions ({words:.1f} words on average, "
                f"alone, a sampled row gave {'the same text' if again[0] == sampled[0] else 'other text'}) "
                f"on {where}, e.g. {greedy[0][:40]!r}")

    def step_rate(self) -> str:
        from humpback import recipe
        from humpback.curation.rater import Rater
        from humpback.curation.select import curate, rate_metrics
        from humpback.engine import open_engine

        params = self.state["params"]
        c = params.curation
        ref, adapter = recipe.rater_model(params)  # the tiny profile names the tiny model itself
        engine = open_engine(ref, params.model, c.batch_size, adapter=adapter, chat=True)
        where = self.check_device(engine.model, "the rater's model")
        rater = Rater(c.scoring, c.max_new_tokens, c.relevance_tokens)
        rated = rater.rate(engine, self.state["pairs"])
        self._check_ratings(rated, len(self.state["pairs"]))
        m = rate_metrics(rated)
        kept = len(curate(rated, c.threshold))
        del engine
        self._free()
        return (f"{m['rated']} pairs rated ({c.scoring}), mean score {m['mean_score']}, "
                f"{kept} kept at threshold {c.threshold}, on {where}")

    def step_probe(self) -> str:
        import dataclasses

        from humpback.curation.backtranslated import load_backtranslated
        from humpback.curation.check import load_rater_check
        from humpback.curation.rater import Rater, check_rater
        from humpback.engine import open_engine

        params, model = self.state["params"], self.state["model"]
        c = params.curation
        pairs = load_rater_check(os.path.join(ROOT, c.check_pairs))
        # an eighth of the rater check: the five levels of every eighth instruction, in each part
        ids = sorted({p["instruction_id"] for p in pairs})[::8]
        pairs = [p for p in pairs if p["instruction_id"] in ids]
        real = load_backtranslated(os.path.join(ROOT, c.check_backtranslated))
        responses = set(sorted({p["response_id"] for p in real})[::8])  # and every eighth labelled response
        real = [p for p in real if p["response_id"] in responses]
        engine = open_engine(model, params.model, c.batch_size, chat=True)
        where = self.check_device(engine.model, "the rater's model")
        c = dataclasses.replace(c, scoring="probe", relevance_tokens=32)
        rater, rated, checked = check_rater(engine, pairs, real, c)
        metrics = checked["constructed"]
        self._check_ratings(rated, metrics["pairs"] + metrics["offtopic_pairs"])
        saved = os.path.join(self.work, "rater")
        rater.save(saved)
        again = Rater.load(saved).rate(engine, rated[:2])
        if [r["score"] for r in again] != [r["score"] for r in rated[:2]]:
            raise AssertionError("the saved probe rater rates differently")
        del engine
        self._free()
        return (f"fit on {rater.fit['dev_pairs']} dev pairs, {len(rated)} test pairs rated, "
                f"spearman {metrics['spearman']}, auc_fit {metrics['auc_fit']}, on {where}")

    def step_4bit(self) -> str:
        import torch

        from humpback import models
        from humpback.engine import Decoding, Engine

        bnb = self._bitsandbytes()
        params, model = self.state["params"], self.state["model"]
        m = models.load_model(model, load_in_4bit=True, dtype=params.model.dtype)
        layers = sum(isinstance(x, bnb.nn.Linear4bit) for x in m.modules())
        if not layers:
            raise AssertionError("no bitsandbytes Linear4bit layer in the 4-bit model")
        where = self.check_device(m, "the 4-bit model")
        tok = models.load_tokenizer(model)
        batch = tok(["Hello there, how are you?", "Write a haiku"], return_tensors="pt", padding=True).to(where)
        with torch.inference_mode():
            logits = m(**batch).logits
        if not torch.isfinite(logits.float()).all():
            raise AssertionError("the 4-bit forward pass gave non-finite logits")
        engine = Engine(m, tok, models.fingerprint(model, dtype=params.model.dtype, load_in_4bit=True), 2)
        out = engine.generate("", ["Hello there", "Write a haiku"], Decoding(max_new_tokens=4), desc="generate (4-bit)")
        weight = next(x for x in m.modules() if isinstance(x, bnb.nn.Linear4bit)).weight
        quant = getattr(getattr(weight, "quant_state", None), "quant_type", "?")
        del m, engine
        self._free()
        return (f"{layers} Linear4bit layers ({quant}, bitsandbytes {bnb.__version__}), logits "
                f"{tuple(logits.shape)} finite, {len(out)} prompts decoded by the engine, on {where}")

    def step_qlora(self) -> str:
        import dataclasses

        from humpback import models, prompts
        from humpback.config import ModelParams
        from humpback.training import train_lora

        self._bitsandbytes()
        params, model = self.state["params"], self.state["model"]
        p = dataclasses.replace(params.inverse_sft, max_steps=1, eval_size=2)
        mp = ModelParams(base=model, load_in_4bit=True, dtype=params.model.dtype)
        tok = models.load_tokenizer(model)
        examples = [prompts.backward_example(x, tok, p.max_response_tokens)
                    for x in self.state["seed"][: p.eval_size + p.per_device_train_batch_size]]
        out = os.path.join(self.work, "qlora")
        metrics = train_lora(mp, p, examples[p.eval_size:], examples[: p.eval_size], out,
                             os.path.join(self.work, "dvclive", "qlora"), "qlora")
        self._check_training(metrics, 1, out)
        loaded = models.load_model(model, load_in_4bit=True, dtype=params.model.dtype, adapter=out)
        if not any("lora_A" in n for n, _ in loaded.named_parameters()):
            raise AssertionError("the QLoRA adapter did not load back onto the 4-bit base")
        where = self.check_device(loaded, "the QLoRA model")
        del loaded
        self._free()
        return f"train_loss {metrics['train_loss']}, {metrics['steps']} step, adapter loads back on {where}"

    # ---------------------------------------------------------------------------------------- helpers
    def _bitsandbytes(self):
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise Skip("bitsandbytes not installed") from None
        return bnb

    def _trained_on(self) -> str:
        import torch

        from humpback import models

        name = getattr(models, "resolve_dtype", lambda d: d)(self.state["params"].model.dtype)
        if self.device == "cuda":
            return f"on cuda:0 ({name}, peak {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB)"
        return f"on cpu ({name})"

    def _check_training(self, metrics: dict, steps: int, out: str) -> None:
        if metrics["steps"] != steps:
            raise AssertionError(f"trained {metrics['steps']} steps, not {steps}")
        for key in ("train_loss", "eval_loss"):
            if key in metrics and not (math.isfinite(metrics[key]) and metrics[key] > 0):
                raise AssertionError(f"{key} is {metrics[key]}")
        if not os.path.exists(os.path.join(out, "adapter_model.safetensors")):
            raise AssertionError(f"no adapter in {out}")

    def _check_ratings(self, rated: list[dict], n: int) -> None:
        if len(rated) != n:
            raise AssertionError(f"{len(rated)} ratings for {n} pairs")
        for r in rated:
            if r["score"] not in (1, 2, 3, 4, 5):
                raise AssertionError(f"pair {r['id']}: score {r['score']!r} is not 1-5")
            if "probabilities" in r and abs(sum(r["probabilities"]) - 1) > 0.02:
                raise AssertionError(f"pair {r['id']}: probabilities {r['probabilities']} do not sum to 1")

    def _free(self) -> None:
        import gc

        import torch

        gc.collect()
        if self.device == "cuda":
            torch.cuda.empty_cache()


def versions() -> str:
    """The versions of the libraries the steps exercise, as this environment has them."""
    import importlib.metadata

    found = []
    for dist in ("torch", "transformers", "peft", "accelerate", "trl", "datasets", "dvclive", "bitsandbytes"):
        try:
            found.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{dist} none")
    return ", ".join(found)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                    help="cuda: the GPU (fails without one); cpu: the same steps on the CPU, the GPU hidden")
    ap.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated, of {','.join(STEPS)}")
    ap.add_argument("--dtype", help="model.dtype for every step (default: the tiny profile's)")
    ap.add_argument("--work", help="working directory (default: a temporary one, deleted afterwards)")
    ap.add_argument("--json", help="also write the results to this JSON file")
    args = ap.parse_args(argv)
    steps = [s for s in args.steps.split(",") if s]
    if unknown := [s for s in steps if s not in STEPS]:
        ap.error(f"unknown step(s) {', '.join(unknown)}; known: {', '.join(STEPS)}")

    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch is imported: the CPU path, even on a GPU machine
    # Nothing here needs the network (the GPU machine has none): fail fast instead of waiting on a hub.
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "DVC_NO_ANALYTICS", "DO_NOT_TRACK"):
        os.environ.setdefault(var, "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for path in (ROOT, os.path.join(ROOT, "tests")):  # humpback, and tests/tiny.py
        if path not in sys.path:
            sys.path.insert(0, path)

    # stdout holds our lines alone: everything else written to it (Python's sys.stdout, or file descriptor 1
    # from native code such as the tokenizers' trainer) goes to stderr.
    sys.stdout.flush()
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    work = os.path.abspath(args.work) if args.work else tempfile.mkdtemp(prefix="gpu-smoke-")
    os.makedirs(work, exist_ok=True)
    # A fresh result cache and checkpoint directory: every result is computed, none read back.
    os.environ["HUMPBACK_CACHE_DIR"] = os.path.join(work, "cache")
    cwd = os.getcwd()
    os.chdir(work)  # DVCLive looks for a Git/DVC repository from here: none, so it touches no repository
    try:
        import torch

        if args.device == "cuda" and not torch.cuda.is_available():
            print(f"gpu-smoke: FAILED: --device cuda, but torch {torch.__version__} sees no CUDA device", file=out,
                  flush=True)
            return 1
        smoke = Smoke(args.device, work, args.dtype, out)
        rc = smoke.run(steps)
        if args.json:
            with open(os.path.join(cwd, args.json), "w", encoding="utf-8") as f:
                json.dump({"summary": smoke.summary, "steps": smoke.results}, f, indent=2)
                f.write("\n")
        return rc
    finally:
        os.chdir(cwd)
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
