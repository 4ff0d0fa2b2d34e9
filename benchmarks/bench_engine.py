"""How fast is the engine, against the naive loop and against this machine's compute floor?

(a) self-augmentation: `Engine.generate` vs a loop calling `model.generate` once per prompt, on the
    pipeline's own prompts (LIMA single-turn responses, held-out split and sample as in prepare and
    self_augment, `prompts.backward_suffix(..., max_tokens=160)`), greedy, max_new_tokens=48. The
    base model without the backward adapter: the speed is the same, the instructions are not.
(b) rating ("expected" mode): `Engine.next_token_probs` over the shared rater prefix vs
    one forward per full prompt, over the rater prompts of the pairs written in (a).
(c) compute floor: fp32 matmul GFLOP/s of this machine, and the share of it (a) and (b) reach.
(d) OpenMP wait policy: one decoding step under the default (spinning) policy and under
    OMP_WAIT_POLICY=PASSIVE, in fresh processes: on a machine shared with other work, spinning
    threads can stall each other; on a quiet one, sleeping threads wake up late.

Prints a markdown report (and writes it with --out). Runs on CPU; the naive loop takes most of the
time (about 3 s per prompt), so develop with a small --n.

    python benchmarks/bench_engine.py --n 64 --batch-size 16,32 --baseline-rev 01b5789
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time

from humpback.config import AugmentParams, CurationParams, DataParams, ModelParams


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=64, help="number of prompts (and of rated pairs)")
    ap.add_argument("--batch-size", default=str(AugmentParams().batch_size),
                    help="engine batch size for (a); a comma-separated list adds rows (the first is the headline)")
    ap.add_argument("--rate-batch-size", type=int, default=CurationParams().batch_size, help="engine batch size for (b)")
    ap.add_argument("--model", default=ModelParams().base)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--baseline-rev", help="also time humpback/generation.py at this git revision "
                    "(one before humpback/engine/, which replaced that module)")
    ap.add_argument("--omp-wait-policy", default="unset",
                    help="OMP_WAIT_POLICY for (a)-(c): PASSIVE, ACTIVE, or unset (the environment's, as the stages run)")
    ap.add_argument("--round", type=int, default=32,
                    help="methods take turns over rounds of this many prompts, so load drift hits them alike")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: a,b,d")
    ap.add_argument("--out", help="write the report to this file (replaced)")
    return ap.parse_args()


ARGS = parse_args()
if ARGS.omp_wait_policy != "unset":  # before torch is imported: libgomp reads it once, at load. See (d).
    os.environ["OMP_WAIT_POLICY"] = ARGS.omp_wait_policy
os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402

from humpback import formats, models, prompts  # noqa: E402

from humpback.curation.rater import digit_candidates, rater_prompt_parts
from humpback.engine import Decoding, Engine  # noqa: E402

MAX_TOKENS = 160  # params.yaml inverse_sft.max_response_tokens
MAX_NEW_TOKENS = 48  # params.yaml augment.max_new_tokens


LOADS: list[float] = []  # 1-minute load average, sampled at every log line


def log(msg: str) -> None:
    LOADS.append(os.getloadavg()[0])
    print(f"[{time.strftime('%H:%M:%S')}] load {LOADS[-1]:.2f} {msg}", file=sys.stderr, flush=True)


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


class Clock:
    """Wall and process CPU seconds of a block."""

    def __enter__(self):
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.wall0
        self.cpu = time.process_time() - self.cpu0


# ---------------------------------------------------------------------------------------------- FLOPs

class FlopModel:
    """Forward FLOPs of a decoder: 2 per weight of every linear layer, plus attention, plus the LM head
    only where logits are computed (the engine and the naive loop both keep the last position only)."""

    def __init__(self, model):
        cfg = model.config
        self.linear = sum(m.weight.numel() for n, m in model.named_modules()
                          if isinstance(m, torch.nn.Linear) and not n.endswith("lm_head"))
        self.head = cfg.vocab_size * cfg.hidden_size
        self.attn = 4 * cfg.num_hidden_layers * cfg.num_attention_heads * (cfg.hidden_size // cfg.num_attention_heads)
        self.params = sum(p.numel() for p in model.parameters())

    def tokens(self, start: int, end: int) -> float:
        """Tokens at positions start..end-1 of one sequence (each attends to every earlier position)."""
        n = end - start
        return 2.0 * self.linear * n + self.attn * (start + end + 1) * n / 2

    def logits(self, rows: int) -> float:
        return 2.0 * self.head * rows


def matmul_gflops(size: int = 2048, reps: int = 10) -> tuple[float, float]:
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    times.sort()
    flops = 2 * size**3
    return flops / times[0] / 1e9, flops / times[len(times) // 2] / 1e9


# ---------------------------------------------------------------------------------------------- data

def pipeline_records(n: int) -> list[dict]:
    """The records self_augment would take with the default params: prepare's split, then its sample."""
    d, a = DataParams(), AugmentParams()
    pairs = formats.parse_lima(formats.read_jsonl(d.lima_path), formats.ParseReport())
    _, unlabelled = formats.split_heldout(pairs, d.heldout_size, d.seed)
    return formats.sample(unlabelled, min(n, len(unlabelled)), a.seed, "data/lima_single_turn.json")


def load_engine_module(rev: str):
    """humpback/generation.py (the engine in one module, before humpback/engine/) as it was at a git revision,
    as a module (for the before/after row)."""
    src = subprocess.run(["git", "show", f"{rev}:humpback/generation.py"], capture_output=True, text=True, check=True).stdout
    path = os.path.join(tempfile.mkdtemp(), "generation_at_rev.py")
    with open(path, "w") as f:
        f.write(src)
    spec = importlib.util.spec_from_file_location("generation_at_rev", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


# ---------------------------------------------------------------------------------------------- rounds

def interleaved(methods: dict, items: list, round_size: int, label: str) -> dict:
    """Run every method over the same items in rounds of `round_size`, rotating their order each round,
    so that load from other work on a shared machine falls on all methods alike. Per method: wall and
    CPU seconds, and each field its function returns, summed (numbers) or concatenated (lists)."""
    acc = {name: {"wall": 0.0, "cpu": 0.0} for name in methods}
    names = list(methods)
    for k, i in enumerate(range(0, len(items), round_size)):
        chunk = items[i : i + round_size]
        for name in names[k % len(names) :] + names[: k % len(names)]:
            with Clock() as c:
                result = methods[name](chunk)
            acc[name]["wall"] += c.wall
            acc[name]["cpu"] += c.cpu
            for key, value in result.items():
                acc[name][key] = acc[name].get(key, [] if isinstance(value, list) else 0) + value
            log(f"{label} round {k + 1}, {name}: {len(chunk)} items in {c.wall:.1f}s")
    return acc


# ---------------------------------------------------------------------------------------------- (a)

def bench_augment(model, tok, records, batch_sizes: list[int], baseline, fm: FlopModel, round_size: int) -> dict:
    prefix = prompts.BACKWARD_PREFIX
    suffixes = [prompts.backward_suffix(r["response"], tok, MAX_TOKENS) for r in records]
    prefix_ids = tok(prefix)["input_ids"]
    eos_ids = Engine(model, tok, "bench", 1).eos_ids

    def engine(batch_size, module=None):
        def run(chunk):
            mod = module or sys.modules[__name__]
            e = (module.Engine if module else Engine)(model, tok, "bench", batch_size)
            outs = e.generate(prefix, chunk, (module.Decoding if module else Decoding)(max_new_tokens=MAX_NEW_TOKENS))
            return {"outs": outs, "gen": e.stats["generated_tokens"]}
        return run

    def naive(chunk):
        eos, outs, gen, lens, written = set(eos_ids), [], 0, [], []
        with torch.inference_mode():
            for s in chunk:
                ids = prefix_ids + tok(s, add_special_tokens=False)["input_ids"]  # the engine's very tokens
                g = model.generate(torch.tensor([ids]), max_new_tokens=MAX_NEW_TOKENS, do_sample=False,
                                   eos_token_id=eos_ids, pad_token_id=tok.pad_token_id)[0, len(ids):].tolist()
                n = next((j for j, t in enumerate(g) if t in eos), len(g))
                w = n + (n < len(g))  # written tokens, its EOS included, as the engine counts them
                gen, lens, written = gen + w, lens + [len(ids)], written + [w]
                outs.append(tok.decode(g[:n], skip_special_tokens=True).strip())
        return {"outs": outs, "gen": gen, "lens": lens, "written": written}

    methods = {"naive": naive}
    if baseline is not None:
        methods["baseline"] = engine(batch_sizes[0], baseline)
    for b in batch_sizes:
        methods[f"engine-{b}"] = engine(b)
    rows = interleaved(methods, suffixes, round_size, "(a)")
    rows["engine"] = rows[f"engine-{batch_sizes[0]}"]
    for b in batch_sizes:
        rows[f"engine-{b}"]["batch"] = b

    # Useful FLOPs of the job: the shared prefix once, each suffix, each generated token fed back.
    P, lens, written = len(prefix_ids), rows["naive"]["lens"], rows["naive"]["written"]
    useful = fm.tokens(0, P) + sum(fm.tokens(P, T) + fm.logits(1) + fm.tokens(T, T + w - 1) + fm.logits(w - 1)
                                   for T, w in zip(lens, written))
    return dict(rows=rows, n=len(suffixes), prompt_tokens=sum(lens), prefix=P, useful_flops=useful,
                batch_size=batch_sizes[0])


# ---------------------------------------------------------------------------------------------- (b)

def bench_rate(model, tok, pairs, batch_size: int, baseline, fm: FlopModel, round_size: int) -> dict:
    add_bos = not tok.chat_template
    head, template = rater_prompt_parts(tok, "expected")  # exactly what rate() builds
    joiner, candidates = digit_candidates(tok)
    head_ids = tok(head, add_special_tokens=add_bos)["input_ids"]

    def engine(module=None):
        def run(chunk):
            e = (module.Engine if module else Engine)(model, tok, "bench", batch_size, add_special_tokens=add_bos)
            # next_token_probs: the call both this engine and the baseline revision's have
            suffixes = [template.format(pair=prompts.rater_pair(p["instruction"], p["response"])) + joiner
                        for p in chunk]
            probs = e.next_token_probs(head, suffixes, candidates)
            scores = [sum((i + 1) * q for i, q in enumerate(ps)) / sum(ps) for ps in probs]
            return {"scores": scores, "tokens": e.stats["prompt_tokens_computed"]}
        return run

    def naive(chunk):
        lens, scores = [], []
        with torch.inference_mode():
            for p in chunk:
                suffix = template.format(pair=prompts.rater_pair(p["instruction"], p["response"])) + joiner
                ids = head_ids + tok(suffix, add_special_tokens=False)["input_ids"]
                probs = model(torch.tensor([ids]), logits_to_keep=1).logits[0, -1].float().softmax(-1)[candidates].tolist()
                lens.append(len(ids))
                scores.append(sum((i + 1) * q for i, q in enumerate(probs)) / sum(probs))
        return {"scores": scores, "tokens": sum(lens), "lens": lens}

    methods = {"naive": naive}
    if baseline is not None:
        methods["baseline"] = engine(baseline)
    methods["engine"] = engine()
    rows = interleaved(methods, pairs, round_size, "(b)")
    P, lens = len(head_ids), rows["naive"]["lens"]
    useful = fm.tokens(0, P) + sum(fm.tokens(P, T) + fm.logits(1) for T in lens)
    return dict(rows=rows, n=len(pairs), prefix=P, full_tokens=sum(lens), useful_tokens=P + sum(T - P for T in lens),
                useful_flops=useful, batch_size=batch_size, rounds=-(-len(pairs) // round_size))


# ---------------------------------------------------------------------------------------------- (d)

STEP_PROBE = """
import time, torch
from humpback import models
m = models.load_model({ref!r})
x = torch.randint(0, 1000, (1, 200))
with torch.inference_mode():
    kv = m(x, use_cache=True, logits_to_keep=1).past_key_values
    ts = []
    for _ in range(8):
        t = time.perf_counter(); m(x[:, :1], past_key_values=kv, use_cache=True); ts.append(time.perf_counter() - t)
ts.sort(); print(ts[len(ts) // 2])
"""


def bench_omp(ref: str) -> dict:
    out = {}
    for policy in ("default", "PASSIVE"):
        env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
        if policy != "default":
            env["OMP_WAIT_POLICY"] = policy
        log(f"(d) decoding step, OMP_WAIT_POLICY={policy}")
        proc = subprocess.run([sys.executable, "-c", STEP_PROBE.format(ref=ref)], capture_output=True, text=True, env=env)
        out[policy] = float(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else None
    return out


# ---------------------------------------------------------------------------------------------- report

def pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def report(args, a, b, omp, peak, load_before, load_after, started, threads) -> str:
    best, median = peak
    L = []
    L.append(f"## Engine benchmark, {started:%Y-%m-%d %H:%M} UTC\n")
    L.append(f"Command: `{' '.join(shlex.quote(x) for x in sys.argv)}` (run from the repo root)\n")
    L.append(f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
             f"{torch.__version__} with {threads} threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}. "
             f"Load average (1, 5, 15 min) before: {load_before}; after: {load_after}; 1-min load during the run "
             f"{min(LOADS):.2f}-{max(LOADS):.2f} (this run alone accounts for up to 2, one per thread; more is other work competing for the 2 cores). "
             f"Model: {args.model} ({args.dtype}), base weights, no adapter. The methods of (a) and of (b) take "
             f"turns over the same prompts in rounds of {args.round}, their order rotated each round, so that other "
             f"work on the machine slows them alike.\n")
    if a:
        r, n = a["rows"], a["n"]
        eng, nv = r["engine"], r["naive"]
        same = sum(x == y for x, y in zip(eng["outs"], nv["outs"]))
        L.append(f"### (a) Self-augmentation: {n} prompts, greedy, max_new_tokens={MAX_NEW_TOKENS}\n")
        L.append(f"Prompts: {a['prompt_tokens']} tokens in full ({a['prompt_tokens'] / n:.0f} per prompt, "
                 f"shared prefix {a['prefix']}).\n")
        L.append("| method | wall s | CPU s | generated tokens | tokens/s | speed-up vs naive | outputs equal to naive |")
        L.append("|---|---:|---:|---:|---:|---:|---:|")
        order = [("naive loop (`model.generate` per prompt)", nv)]
        if "baseline" in r:
            order.append((f"engine at {args.baseline_rev} (HF generate, deepcopied prefix cache)", r["baseline"]))
        order += [(f"engine (this version), batch {row['batch']}" + (" (params.yaml)" if row["batch"] == AugmentParams().batch_size else ""), row)
                  for k, row in r.items() if k.startswith("engine-")]
        for name, row in order:
            eq = sum(x == y for x, y in zip(row["outs"], nv["outs"]))
            L.append(f"| {name} | {row['wall']:.1f} | {row['cpu']:.1f} | {row['gen']} | {row['gen'] / row['wall']:.1f} | "
                     f"{(row['gen'] / row['wall']) / (nv['gen'] / nv['wall']):.1f}x | {eq}/{n} |")
        speed = (eng["gen"] / eng["wall"]) / (nv["gen"] / nv["wall"])
        L.append("")
        best_speed = max((row["gen"] / row["wall"]) / (nv["gen"] / nv["wall"])
                         for k, row in r.items() if k.startswith("engine-"))
        L.append(f"Target >= 10x: {'met' if speed >= 10 else 'not met'} ({speed:.1f}x at batch {a['batch_size']}, "
                 f"{best_speed:.1f}x at the best one measured). Greedy outputs of the engine equal to the naive "
                 f"loop's: {same}/{n}.\n")
    if b:
        r, n = b["rows"], b["n"]
        eng, nv = r["engine"], r["naive"]
        diff = max(abs(x - y) for x, y in zip(eng["scores"], nv["scores"]))
        L.append(f"### (b) Rating, expected mode: {n} pairs (instructions from (a), full responses)\n")
        L.append(f"Rater prefix (rubric + examples, chat template) {b['prefix']} tokens; full prompts "
                 f"{b['full_tokens'] / n:.0f} tokens on average.\n")
        L.append("| method | prompt tokens computed | wall s | CPU s | tokens fewer vs naive | speed-up vs naive |")
        L.append("|---|---:|---:|---:|---:|---:|")
        order = [("naive: one forward per full prompt", nv)]
        if "baseline" in r:
            order.append((f"engine at {args.baseline_rev}", r["baseline"]))
        order.append((f"engine (this version), shared prefix, batch {b['batch_size']}"
                      + (" (params.yaml)" if b["batch_size"] == CurationParams().batch_size else ""), eng))
        for name, row in order:
            L.append(f"| {name} | {row['tokens']} | {row['wall']:.1f} | {row['cpu']:.1f} | "
                     f"{nv['tokens'] / row['tokens']:.2f}x | {nv['wall'] / row['wall']:.2f}x |")
        tok_ratio, time_ratio = nv["tokens"] / eng["tokens"], nv["wall"] / eng["wall"]
        padding = eng["tokens"] - b["useful_tokens"] - (b["rounds"] - 1) * b["prefix"]
        L.append("")
        L.append(f"Targets: >= 3x fewer tokens: {'met' if tok_ratio >= 3 else 'not met'} ({tok_ratio:.2f}x); "
                 f">= 2.5x faster: {'met' if time_ratio >= 2.5 else 'not met'} ({time_ratio:.2f}x). "
                 f"Largest difference of expected score, engine vs naive: {diff:.2g}. Engine tokens include "
                 f"padding ({padding} tokens, {pct(padding / eng['tokens'])}) and the prefix once per round "
                 f"({b['rounds']} rounds).\n")
    L.append(f"### (c) Compute floor\n")
    L.append(f"fp32 matmul 2048x2048: best {best:.0f} GFLOP/s, median {median:.0f} GFLOP/s (best of the measurements "
             f"before and after the runs). FLOPs: 2 per linear weight per token ({args._linear / 1e6:.0f}M linear "
             f"weights), attention 4·layers·d per key, LM head only for the positions whose logits are used. "
             f"\"Useful\" FLOPs are those of the job done once: the shared prefix once, each suffix, each generated "
             f"token fed back; padding and recomputed prefixes are not useful.\n")
    L.append("| stage | method | useful GFLOP | floor s at best matmul | wall s | share of floor reached |")
    L.append("|---|---|---:|---:|---:|---:|")
    for name, x in (("(a) self-augmentation", a), ("(b) rating", b)):
        if not x:
            continue
        floor = x["useful_flops"] / (best * 1e9)
        for method, row in x["rows"].items():
            if method == "engine" and name.startswith("(a)"):
                continue  # an alias of the params' batch size row
            label = {"naive": "naive", "baseline": f"engine at {args.baseline_rev}", "engine": "engine"}.get(
                method, f"engine, batch {row.get('batch')}")
            L.append(f"| {name} | {label} | {x['useful_flops'] / 1e9:.0f} | {floor:.1f} | {row['wall']:.1f} | "
                     f"{pct(floor / row['wall'])} |")
    L.append("")
    if omp:
        L.append("### (d) OpenMP wait policy on a shared machine\n")
        L.append("One decoding step (batch 1, 200 cached tokens), median of 8, in a fresh process each:\n")
        L.append("| OMP_WAIT_POLICY | ms per step |")
        L.append("|---|---:|")
        for k, v in omp.items():
            L.append(f"| {k} | {'failed' if v is None else f'{1000 * v:.0f}'} |")
        L.append("")
    return "\n".join(L)


def main():
    args = ARGS
    skip = set(filter(None, args.skip.split(",")))

    started = datetime.datetime.now(datetime.timezone.utc)
    load_before = loadavg()
    threads = torch.get_num_threads()
    peak0 = matmul_gflops()
    log(f"matmul {peak0[0]:.0f} GFLOP/s")
    tok = models.load_tokenizer(args.model)
    model = models.load_model(args.model, dtype=args.dtype)
    fm = FlopModel(model)
    args._linear = fm.linear
    baseline = load_engine_module(args.baseline_rev) if args.baseline_rev else None
    records = pipeline_records(args.n)

    sizes = [int(x) for x in args.batch_size.split(",")]
    a = bench_augment(model, tok, records, sizes, baseline, fm, args.round) if "a" not in skip else None
    b = None
    if "b" not in skip:
        if a:
            instructions = a["rows"]["engine"]["outs"]
        else:  # the same instructions (a) would write (greedy), untimed
            log("(b) writing the instructions to rate (untimed)")
            instructions = Engine(model, tok, "bench", max(sizes)).generate(
                prompts.BACKWARD_PREFIX, [prompts.backward_suffix(r["response"], tok, MAX_TOKENS) for r in records],
                Decoding(max_new_tokens=MAX_NEW_TOKENS))
        pairs = [{"id": r["id"], "instruction": ins, "response": r["response"]} for r, ins in zip(records, instructions)]
        b = bench_rate(model, tok, pairs, args.rate_batch_size, baseline, fm, args.round)
    omp = bench_omp(args.model) if "d" not in skip else None
    peak1 = matmul_gflops()
    peak = (max(peak0[0], peak1[0]), max(peak0[1], peak1[1]))
    load_after = loadavg()
    text = report(args, a, b, omp, peak, load_before, load_after, started, threads)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
