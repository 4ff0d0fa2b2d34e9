"""finetune: LoRA fine-tune of the base model on the curated pairs (instruction -> response)."""

from humpback import HumpbackError, formats, prompts
from humpback.config import load_params
from humpback.stage import run
from humpback.training import train_lora


def main():
    params = load_params()
    p, threshold = params.finetune, params.curation.threshold
    curated = formats.load_json("data/curated_dataset.json")
    if len(curated) < max(p.min_pairs, 1):
        raise HumpbackError(
            f"data/curated_dataset.json has {len(curated)} pairs at curation.threshold={threshold}, "
            f"fewer than finetune.min_pairs={p.min_pairs}: lower the threshold (dvc exp run -S curation.threshold=3) "
            f"or finetune.min_pairs"
        )
    train = [prompts.forward_example(x) for x in curated]
    # Eval loss on held-out LIMA pairs: never augmented, so it measures generalisation.
    eval = [prompts.forward_example(x) for x in formats.load_json("data/lima_heldout.json")[: p.eval_size]]
    metrics = train_lora(params.model, p, train, eval, "models/final", "dvclive/finetune", "finetune")
    formats.write_json("metrics/finetune.json", {"threshold": threshold, **metrics})


if __name__ == "__main__":
    run(main)
