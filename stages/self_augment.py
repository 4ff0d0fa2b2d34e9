"""self_augment: the backward model writes an instruction for each sampled unlabelled response."""

from humpback import formats, paths, prompts
from humpback.config import load_params
from humpback.dist import is_main_process
from humpback.engine import Decoding, open_engine
from humpback.stage import run


def main():
    params = load_params()
    p, m = params.augment, params.model
    records = formats.sample(formats.load_json(paths.UNLABELLED), p.num_samples, p.seed,
                             paths.UNLABELLED)
    engine = open_engine(m.base, m, p.batch_size, adapter=paths.BACKWARD_MODEL, engine=params.launch.engine)
    tok = engine.tok
    decoding = Decoding(max_new_tokens=p.max_new_tokens, do_sample=p.do_sample,
                        temperature=p.temperature, top_p=p.top_p, seed=p.seed)
    max_tokens = params.inverse_sft.max_response_tokens  # the backward model was trained on this view
    suffixes = [prompts.backward_suffix(r["response"], tok, max_tokens) for r in records]
    instructions = engine.generate(prompts.BACKWARD_PREFIX, suffixes, decoding, desc="self_augment")
    if not is_main_process():  # under `accelerate launch`: the main process writes the outs
        return
    augmented = [
        {"id": r["id"], "instruction": ins, "response": r["response"], "source": r["source"],
         "decoding": decoding.as_dict()}
        for r, ins in zip(records, instructions)
    ]
    formats.write_json(paths.AUGMENTED, augmented)
    formats.write_json(paths.metrics("self_augment"), {
        "dtype": engine.dtype,
        "samples": len(augmented),
        "empty_instructions": sum(1 for a in augmented if not a["instruction"]),
        "mean_instruction_words": round(sum(len(a["instruction"].split()) for a in augmented) / len(augmented), 2),
    })
    engine.report("self_augment")  # run statistics (cache hits, tokens, speed) go to the log, not the outs


if __name__ == "__main__":
    run(main)
