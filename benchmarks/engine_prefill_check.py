"""The final model's greedy IFEval answers through the native engine, timed, without the result cache,
written to a JSON file: run it once on each of two checkouts (PYTHONPATH=<checkout>) and compare the
files, to check that an engine change computes the same answers, and how fast.

    PYTHONPATH=<checkout> python benchmarks/engine_prefill_check.py NAME   # writes /tmp/NAME.json
"""

import json
import sys
import time

from humpback import models, paths, prompts
from humpback.config import load_params
from humpback.engine import Decoding, Engine
from humpback.evaluation import measure
from humpback.judge import shared_prefix


def main():
    name = sys.argv[1]
    params = load_params()
    m, e = params.model, params.evaluate
    inputs = measure.load_inputs(params)
    model = models.load_model(m.base, m.load_in_4bit, m.dtype, adapter=paths.FINAL.model)
    tok = models.load_tokenizer(paths.FINAL.model)
    texts = [prompts.chat_prompt(inputs.tokenizer, r["prompt"], inputs.system) for r in inputs.ifeval]
    cut = shared_prefix(texts)
    engine = Engine(model, tok, "check", e.respond_batch_size, None, add_special_tokens=False)
    start = time.perf_counter()
    out = engine.generate(texts[0][:cut], [x[cut:] for x in texts], Decoding(max_new_tokens=e.ifeval_max_new_tokens))
    print(f"{name}: {time.perf_counter() - start:.1f} s, {engine.stats['generated_tokens']} tokens generated")
    with open(f"/tmp/{name}.json", "w", encoding="utf-8") as f:
        json.dump(out, f)
    if len(sys.argv) > 2:  # another run's file: how many answers are identical
        with open(sys.argv[2], encoding="utf-8") as f:
            other = json.load(f)
        print(f"identical to {sys.argv[2]}: {sum(a == b for a, b in zip(out, other))}/{len(out)}")


if __name__ == "__main__":
    main()
