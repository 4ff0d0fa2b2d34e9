"""inverse_sft: train the backward model, which writes the instruction for a given response."""

from humpback import HumpbackError, formats, models, paths, prompts
from humpback.config import load_params
from humpback.dist import is_main_process
from humpback.stage import run
from humpback.training import train_lora


def main():
    params = load_params()
    p = params.inverse_sft
    tok = models.load_tokenizer(params.model.base)
    scaffold = len(tok(prompts.backward_prompt(""))["input_ids"])
    if p.max_response_tokens and scaffold + p.max_response_tokens >= p.max_length:
        raise HumpbackError(f"params.yaml: inverse_sft.max_response_tokens={p.max_response_tokens} plus the "
                            f"{scaffold}-token prompt leaves no room for the instruction in max_length={p.max_length}")
    examples = [prompts.backward_example(x, tok, p.max_response_tokens)
                for x in formats.load_json(paths.SEED_PAIRS)]
    train, eval = examples[p.eval_size :], examples[: p.eval_size]
    metrics = train_lora(params.model, p, train, eval, paths.BACKWARD_MODEL, paths.live("inverse_sft"), "inverse_sft")
    if is_main_process():  # under `accelerate launch` every process trains; one writes
        formats.write_json(paths.metrics("inverse_sft"), metrics)


if __name__ == "__main__":
    run(main)
