"""The controls table: experiments (`dvc exp run -n NAME -S ...`) side by side, with intervals.

Each run's metrics, params and per-prompt IFEval results (data/ifeval_answers.json, a cached out) are
read at its experiment commit with dvc.api. Besides each run's own final-minus-base deltas, it prints the paired difference of
each run's final model from a reference run's (the same 240 prompts: a paired bootstrap over prompts),
and the spread over training seeds of the groups given with --group:

    python benchmarks/controls.py --reference cur4-s0 cur4-s0 random-s0 thr5 ... \
        --group curated=cur4-s0,cur4-s1,cur4-s2 --group random=random-s0,random-s1,random-s2
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess

import dvc.api

from humpback.evaluation.bootstrap import interval

RESAMPLES, SEED = 2000, 0


def exp_rev(name: str) -> str:
    """An experiment's commit, by name (refs/exps/.../NAME) or any git revision."""
    refs = subprocess.run(["git", "for-each-ref", "--format=%(refname) %(objectname)", "refs/exps"],
                          capture_output=True, text=True, check=True).stdout.split("\n")
    found = [r.split()[1] for r in refs if r and r.split()[0].rsplit("/", 1)[-1] == name]
    if len(found) > 1:
        raise SystemExit(f"error: {len(found)} experiments are named {name!r}")
    return found[0] if found else name


def load_run(name: str) -> dict:
    rev = exp_rev(name)
    ev, cur, answers = (json.loads(dvc.api.read(p, rev=rev)) for p in
                        ("metrics/evaluate.json", "metrics/curate.json", "data/ifeval_answers.json"))
    params = dvc.api.params_show(rev=rev)
    return {"name": name, "rev": rev, "ev": ev, "cur": cur, "params": params,
            "final": [float(all(r["final"]["followed"])) for r in answers]}


def fmt(x: float, ci: dict | None = None, sign: bool = True) -> str:
    f = "{:+.4f}" if sign else "{:.4f}"
    return f"{f.format(x)} [{f.format(ci['lo'])}, {f.format(ci['hi'])}]" if ci else f.format(x)


def changed(run: dict, ref: dict) -> str:
    out = []
    for section in ("curation", "finetune"):
        for k, v in run["params"][section].items():
            if ref["params"][section].get(k) != v:
                out.append(f"{section}.{k}={v}")
    return " ".join(out) or "(default)"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--reference", required=True, help="the run the others' final models are compared with")
    ap.add_argument("--group", action="append", default=[], help="NAME=run,run,...: seeds of one setting")
    args = ap.parse_args()
    ref = load_run(args.reference)
    runs = [ref if r == args.reference else load_run(r) for r in args.runs]
    print(f"dtype: {sorted({r['ev']['dtype'] for r in runs})}; base prompt level "
          f"{ref['ev']['ifeval']['base']['prompt_level_accuracy']:.4f}; seed-only "
          f"{ref['ev']['ifeval']['seed']['prompt_level_accuracy']:.4f}\n")
    print("| run | params | pairs kept | IFEval prompt level (final) | final - base | final - seed-only | "
          f"final - {args.reference}'s final | gap delta | NLL delta |")
    print("|---|---|---:|---|---|---|---|---|---|")
    for r in runs:
        ev, ife = r["ev"], r["ev"]["ifeval"]
        vs_ref = "" if r is ref else fmt(
            (sum(r["final"]) - sum(ref["final"])) / len(ref["final"]),
            interval(lambda a, b: b.mean() - a.mean(), [ref["final"], r["final"]], RESAMPLES, SEED))
        fb, fs = ife["final_vs_base"], ife.get("final_vs_seed")
        print(f"| {r['name']} | `{changed(r, ref)}` | {r['cur'].get('kept', '')} | "
              f"{fmt(ife['final']['prompt_level_accuracy'], ife['final']['prompt_level_accuracy_ci'], False)} | "
              f"{fmt(fb['prompt_level_delta'], fb['prompt_level_delta_ci'])} | "
              f"{fmt(fs['prompt_level_delta'], fs['prompt_level_delta_ci']) if fs else ''} | {vs_ref} | "
              f"{fmt(ev['gap_delta'], ev['gap_delta_ci'])} | {fmt(ev['nll_delta'], ev['nll_delta_ci'])} |")
    by_name = {r["name"]: r for r in runs}
    pooled = {}
    for g in args.group:
        name, members = g.split("=", 1)
        group = [by_name[m] for m in members.split(",")]
        acc = [r["ev"]["ifeval"]["final"]["prompt_level_accuracy"] for r in group]
        nll = [r["ev"]["nll_delta"] for r in group]
        print(f"\n{name} over {len(acc)} training seeds: IFEval prompt level mean {statistics.mean(acc):.4f}, "
              f"sd {statistics.stdev(acc):.4f}, range {min(acc):.4f}-{max(acc):.4f}; NLL delta mean "
              f"{statistics.mean(nll):+.4f}, sd {statistics.stdev(nll):.4f}")
        pooled[name] = [statistics.mean(col) for col in zip(*(r["final"] for r in group))]  # per prompt
    if len(pooled) == 2:  # the second group minus the first, each prompt averaged over its seeds: paired
        (a, pa), (b, pb) = pooled.items()
        ci = interval(lambda x, y: y.mean() - x.mean(), [pa, pb], RESAMPLES, SEED)
        print(f"\n{b} - {a}, prompt level averaged over seeds: {fmt(statistics.mean(pb) - statistics.mean(pa), ci)}")


if __name__ == "__main__":
    main()
