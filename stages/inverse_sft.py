"""inverse_sft: train the backward model, which writes the instruction for a given response."""

from humpback import formats, prompts
from humpback.config import load_params
from humpback.stage import run
from humpback.training import train_lora


def main():
    params = load_params()
    p = params.inverse_sft
    examples = [prompts.backward_example(x, p.max_response_words) for x in formats.load_json("data/guanaco_inverse.json")]
    train, eval = examples[p.eval_size :], examples[: p.eval_size]
    metrics = train_lora(params.model, p, train, eval, "models/backward", "dvclive/inverse_sft", "inverse_sft")
    formats.write_json("metrics/inverse_sft.json", metrics)


if __name__ == "__main__":
    run(main)
