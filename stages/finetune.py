"""finetune: LoRA fine-tune of the base model on a round's curated pairs (instruction -> response), with
the seed pairs mixed in and system-prompt tags when configured.

`python stages/finetune.py round1` trains M1, the model that re-rates under curation.iterations: 2."""

import sys

from humpback import HumpbackError, formats, models, paths, prompts, recipe
from humpback.config import load_params
from humpback.dist import is_main_process
from humpback.stage import run
from humpback.training import train_lora


def main():
    params = load_params()
    p, c, rnd = params.finetune, params.curation, recipe.round_arg(sys.argv)
    if rnd.name == "round1" and c.iterations == 1:
        if not is_main_process():
            return
        recipe.write_skipped(rnd.model, "curation.iterations is 1")
        recipe.write_skipped(rnd.live, "curation.iterations is 1")
        formats.write_json(rnd.finetune_metrics, {"trained": False})
        return
    curated = formats.load_json(rnd.curated)
    if len(curated) < max(p.min_pairs, 1):
        raise HumpbackError(
            f"{rnd.curated} has {len(curated)} pairs at curation.threshold={c.threshold}, fewer than "
            f"finetune.min_pairs={p.min_pairs}: lower the threshold (dvc exp run -S curation.threshold=3) "
            f"or finetune.min_pairs"
        )
    tok = models.load_tokenizer(params.model.base)
    train = recipe.finetune_examples(curated, formats.load_json(paths.SEED_PAIRS), tok, p)
    # Eval loss on held-out LIMA pairs: never augmented, so it measures generalisation.
    eval = [prompts.forward_example(x, tok, recipe.inference_system(p))
            for x in formats.load_json(paths.HELDOUT)[: p.eval_size]]
    metrics = train_lora(params.model, p, train, eval, rnd.model, rnd.live, "finetune")
    if not is_main_process():  # under `accelerate launch` every process trains; one writes
        return
    formats.write_json(rnd.finetune_metrics, {"trained": True, "threshold": c.threshold, "curated_pairs": len(curated),
                                              "seed_pairs": len(train) - len(curated), **metrics})


if __name__ == "__main__":
    run(main)
