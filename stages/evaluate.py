"""evaluate: held-out response NLL and perplexity of the base model and of the fine-tuned model."""

from humpback import formats, models
from humpback.config import load_params
from humpback.evaluation import response_nll
from humpback.stage import run


def main():
    params = load_params()
    m, e = params.model, params.evaluate
    heldout = formats.load_json("data/lima_heldout.json")
    tok = models.load_tokenizer(m.base, padding_side="right")
    model = models.load_model(m.base, m.load_in_4bit, m.dtype)
    base = response_nll(model, tok, heldout, e.batch_size, e.max_length, desc="evaluate base")
    from peft import PeftModel

    final = response_nll(PeftModel.from_pretrained(model, "models/final"), tok, heldout, e.batch_size,
                         e.max_length, desc="evaluate final")
    formats.write_json("metrics/evaluate.json", {
        "heldout_pairs": len(heldout),
        "base": base,
        "final": final,
        "nll_delta": round(final["nll"] - base["nll"], 4),
    })


if __name__ == "__main__":
    run(main)
