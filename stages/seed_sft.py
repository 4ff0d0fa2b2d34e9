"""seed_sft: fine-tune the base model on the seed pairs (instruction -> response): the seed model M0, which
rates the augmented pairs under curation.rater: self, as in the paper."""

from humpback import formats, models, paths, prompts, recipe
from humpback.config import load_params
from humpback.dist import is_main_process
from humpback.stage import run
from humpback.training import train_lora


def main():
    params = load_params()
    p = params.seed_sft
    if not recipe.seed_model_needed(params):
        if not is_main_process():
            return
        why = "neither curation.rater nor evaluate.judge is `self`"
        recipe.write_skipped(paths.SEED_MODEL, why)
        recipe.write_skipped(paths.live("seed_sft"), why)
        formats.write_json(paths.metrics("seed_sft"), {"trained": False})
        return
    tok = models.load_tokenizer(params.model.base)
    examples = [prompts.forward_example(x, tok) for x in formats.load_json(paths.SEED_PAIRS)]
    train, eval = examples[p.eval_size :], examples[: p.eval_size]
    metrics = train_lora(params.model, p, train, eval, paths.SEED_MODEL, paths.live("seed_sft"), "seed_sft")
    if is_main_process():  # under `accelerate launch` every process trains; one writes
        formats.write_json(paths.metrics("seed_sft"), {"trained": True, **metrics})


if __name__ == "__main__":
    run(main)
