"""Does a contrast show a nearby question? Candidate fit features on the hand-labelled backtranslated pairs
(data/rater_check/backtranslated.jsonl: 64 responses, 8 instructions each, labelled blind), against the
fitted rater's expected score (models/rater, as `rate` uses it). Per pair, over the response's first
`curation.relevance_tokens` tokens, each under the base model and under the rater's model (M0):

- `pmi`: log p(R | I) - log p(R | empty instruction), per token: the rater's relevance term;
- `vs_candidates`: log p(R | I) minus the log-mean-exp of log p(R | I') over the response's other
  instructions (what best-of-k's other candidates would give), per token;
- `vs_neighbours`: log p(R | I) minus the largest log p(R | I') over the greedy instructions of the
  `--neighbours` responses nearest in words (idf-weighted cosine): another question on a nearby topic.

It prints each feature's AUC for `fits` and for a rating of 4-5, per part, with a 95% interval from a
bootstrap over responses (the 8 pairs of a response move together), and the paired AUC difference from
the rater's score. At the sizes the rater keeps at 4 and at 5, each feature's precision: the share of
positives among that many pairs it ranks highest (the rater's own row: ranked by expected score), and
in as many as there are positives (where precision equals recall):

    python benchmarks/contrastive_relevance.py [--neighbours 4] [--resamples 1000]
"""

from __future__ import annotations

import argparse
import math
import random
import re
from collections import Counter, defaultdict

from humpback import paths, recipe
from humpback.config import load_params
from humpback.curation.backtranslated import load_backtranslated
from humpback.curation.check import auc
from humpback.curation.rater import Rater, response_logprobs
from humpback.engine import open_engine

LABELLED = "data/rater_check/backtranslated.jsonl"
GREEDY = ("bf16", "greedy")  # the committed run's backward model, greedy: what a neighbour's pipeline writes


def words(text: str) -> Counter:
    return Counter(re.findall(r"[a-z]{3,}", text.lower()))


def nearest(responses: dict[str, str], k: int) -> dict[str, list[str]]:
    """Each response's k nearest other responses by idf-weighted cosine of word counts."""
    bags = {r: words(t) for r, t in responses.items()}
    df = Counter(w for b in bags.values() for w in b)
    n = len(bags)
    vec = {r: {w: c * math.log(n / df[w]) for w, c in b.items()} for r, b in bags.items()}
    norm = {r: math.sqrt(sum(x * x for x in v.values())) or 1.0 for r, v in vec.items()}

    def cos(a, b):
        return sum(x * vec[b].get(w, 0.0) for w, x in vec[a].items()) / (norm[a] * norm[b])

    return {r: sorted((o for o in vec if o != r), key=lambda o: -cos(r, o))[:k] for r in vec}


def logprobs(engine, pairs: list[tuple[str, str]], max_tokens: int, desc: str) -> list[tuple[float, int]]:
    """(sum log p(response head | instruction), tokens), as the rater's relevance computes it."""
    out = response_logprobs(engine, [i for i, _ in pairs], [r for _, r in pairs], max_tokens, desc)
    return [(o["logprob"], max(o["tokens"], 1)) for o in out]


def features(engine, pairs: list[dict], near: dict[str, list[str]], greedy: dict[str, str], max_tokens: int,
             tag: str) -> dict[str, list[float]]:
    own = logprobs(engine, [(p["instruction"], p["response"]) for p in pairs], max_tokens, f"{tag}: own")
    by_response = {p["response_id"]: p["response"] for p in pairs}
    rids = sorted(by_response)
    empty = dict(zip(rids, logprobs(engine, [("", by_response[r]) for r in rids], max_tokens, f"{tag}: empty")))
    jobs = [(r, n) for r in rids for n in near[r]]
    other = logprobs(engine, [(greedy[n], by_response[r]) for r, n in jobs], max_tokens, f"{tag}: neighbours")
    neigh = defaultdict(list)
    for (r, _), (lp, _) in zip(jobs, other):
        neigh[r].append(lp)
    group = defaultdict(list)
    for i, p in enumerate(pairs):
        group[p["response_id"]].append(i)
    pmi, vs_cand, vs_neigh = [], [], []
    for i, p in enumerate(pairs):
        lp, t = own[i]
        r = p["response_id"]
        pmi.append((lp - empty[r][0]) / t)
        others = {pairs[j]["instruction"]: own[j][0] for j in group[r] if pairs[j]["instruction"] != p["instruction"]}
        ref = list(others.values()) or [lp]
        m = max(ref)
        vs_cand.append((lp - (m + math.log(sum(math.exp(x - m) for x in ref) / len(ref)))) / t)
        vs_neigh.append((lp - max(neigh[r])) / t)
    return {f"pmi ({tag})": pmi, f"vs_candidates ({tag})": vs_cand, f"vs_neighbours ({tag})": vs_neigh}


def auc_of(score: list[float], label: list[bool], idx: list[int]) -> float:
    pos = [score[i] for i in idx if label[i]]
    neg = [score[i] for i in idx if not label[i]]
    return auc(pos, neg) if pos and neg else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--neighbours", type=int, default=4)
    ap.add_argument("--resamples", type=int, default=1000)
    args = ap.parse_args()
    params = load_params()
    pairs = load_backtranslated(LABELLED)
    by_response = {p["response_id"]: p["response"] for p in pairs}
    greedy = {p["response_id"]: p["instruction"] for p in pairs if (p["backward"], p["decoding"]) == GREEDY}
    near = nearest(by_response, args.neighbours)
    n_tok = params.curation.relevance_tokens
    m = params.model

    ref, adapter = recipe.rater_model(params)
    rater_engine = open_engine(ref, m, params.curation.batch_size, adapter=adapter, chat=True)
    rated = Rater.load(paths.RATER).rate(rater_engine, [{"instruction": p["instruction"], "response": p["response"]}
                                                        for p in pairs])
    scores = {"rater (expected score)": [r["score_expected"] for r in rated]}
    scores.update(features(rater_engine, pairs, near, greedy, n_tok, "M0"))
    del rater_engine
    base_engine = open_engine(m.base, m, params.curation.batch_size, chat=True)
    scores.update(features(base_engine, pairs, near, greedy, n_tok, "base"))

    labels = {"fits": [bool(p["fits"]) for p in pairs], "rated 4-5": [p["rating"] >= 4 for p in pairs]}
    print(f"{LABELLED}: {len(pairs)} pairs, {len(by_response)} responses; dtype {base_engine.dtype}; "
          f"{args.neighbours} neighbours; bootstrap over responses, {args.resamples} resamples\n")
    rng = random.Random(0)
    rows = defaultdict(list)  # a response's pairs: what the bootstrap draws together
    for i, p in enumerate(pairs):
        rows[p["response_id"]].append(i)
    for part in ("dev", "test"):
        rids = sorted({p["response_id"] for p in pairs if p["split"] == part})
        draws = [[i for r in rng.choices(rids, k=len(rids)) for i in rows[r]] for _ in range(args.resamples)]
        full = [i for r in rids for i in rows[r]]
        for lname, label in labels.items():
            n_pos = sum(label[i] for i in full)
            print(f"**{part} part, AUC for {lname}** ({len(full)} pairs, {n_pos} positive)\n")
            kept = {t: sum(rated[i]["score"] >= t for i in full) for t in (4, 5)}
            kept["positives"] = n_pos  # precision there is also recall
            print(f"| feature | AUC | minus the rater's | precision in the top {kept[4]} | in the top {kept[5]} "
                  f"| in the top {n_pos} |\n|---|---|---|---:|---:|---:|")
            base = scores["rater (expected score)"]
            for name, s in scores.items():
                a = auc_of(s, label, full)
                boot = sorted(x for x in (auc_of(s, label, d) for d in draws) if x == x)  # nan: one class
                diff = sorted(x for x in (auc_of(s, label, d) - auc_of(base, label, d) for d in draws) if x == x)
                lo, hi = int(0.025 * len(boot)), int(0.975 * len(boot)) - 1
                d = "" if s is base else (f"{a - auc_of(base, label, full):+.3f} "
                                          f"[{diff[lo]:+.3f}, {diff[hi]:+.3f}]")
                top = {t: sorted(full, key=lambda i: -s[i])[:n] for t, n in kept.items()}
                prec = " | ".join(f"{sum(label[i] for i in top[t]) / max(len(top[t]), 1):.3f}" for t in kept)
                print(f"| {name} | {a:.3f} [{boot[lo]:.3f}, {boot[hi]:.3f}] | {d} | {prec} |")
            print()


if __name__ == "__main__":
    main()
