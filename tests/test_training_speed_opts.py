"""The speed options of humpback/training/ compute what the plain path computes (correctness, not timing).

- trl packing (BFD, padding-free: several examples in one row, position_ids, no attention mask) must give
  each example the loss it has alone, with both CPU attention implementations (sdpa, eager): transformers
  builds a block-diagonal mask from the position_ids.
- The LM head on labelled positions only (training.compat.lm_head_on_label_positions_only) must give the same
  per-token log-probabilities as trl's CPU default, which scores every position.
- bf16 training (model.dtype: bfloat16) runs on CPU, gives a finite loss near fp32's, and saves an fp32 adapter.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from humpback import formats, prompts


def _examples(repo_root, model_dir, n=10):
    from humpback.models import load_tokenizer

    pairs = formats.parse_guanaco(formats.read_jsonl(os.path.join(repo_root, "data/raw/guanaco.jsonl")),
                                  formats.ParseReport())
    tok = load_tokenizer(model_dir)
    return [prompts.backward_example(p, tok, 12) for p in pairs[:n]]


def _trainer(model_dir, examples, dtype=torch.float32, attn="sdpa", **config):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from humpback.models import load_tokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation=attn)
    args = SFTConfig(output_dir="/tmp/unused-sft-out", max_length=512, use_cpu=True, bf16=False,
                     report_to="none", save_strategy="no", **config)
    return SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(examples),
                      processing_class=load_tokenizer(model_dir, padding_side="right"))


def _segments(batch):
    """(row, start, end) of each example in a collated batch, padded or packed."""
    if "attention_mask" in batch:
        return [(r, 0, int(batch["attention_mask"][r].sum())) for r in range(batch["input_ids"].shape[0])]
    pos = batch["position_ids"][0]
    starts = (pos == 0).nonzero().flatten().tolist() + [len(pos)]
    return [(0, s, e) for s, e in zip(starts, starts[1:])]


def _per_example_loss(model, input_ids, labels, **kwargs):
    with torch.no_grad():
        logits = model(input_ids=input_ids, **kwargs).logits.float()
    return torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=-100,
                                             reduction="none"), labels[:, 1:] != -100


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_batch_gives_each_example_its_loss_alone(tiny_model, repo_root, attn):
    trainer = _trainer(tiny_model, _examples(repo_root, tiny_model), attn=attn, per_device_train_batch_size=4, packing=True)
    model = trainer.model.eval()
    batch = next(iter(trainer.get_train_dataloader()))
    assert "attention_mask" not in batch and batch["input_ids"].shape[0] == 1  # padding-free: one row
    segments = _segments(batch)
    assert len(segments) >= 3, "the batch should pack several examples into its row"
    nll, mask = _per_example_loss(model, batch["input_ids"], batch["labels"], position_ids=batch["position_ids"])
    for _, s, e in segments:
        packed = nll[0, s : e - 1][mask[0, s : e - 1]].mean().item()
        ids, labels = batch["input_ids"][:, s:e], batch["labels"][:, s:e]
        alone_nll, alone_mask = _per_example_loss(model, ids, labels)
        alone = alone_nll[alone_mask].mean().item()
        assert abs(packed - alone) < 1e-4, (attn, s, e, packed, alone)


def test_padded_batch_gives_each_example_its_loss_alone(tiny_model, repo_root):
    """The reference path (right padding + attention mask), held to the same standard."""
    trainer = _trainer(tiny_model, _examples(repo_root, tiny_model), per_device_train_batch_size=4,
                       train_sampling_strategy="group_by_length")
    model = trainer.model.eval()
    batch = next(iter(trainer.get_train_dataloader()))
    nll, mask = _per_example_loss(model, batch["input_ids"], batch["labels"], attention_mask=batch["attention_mask"])
    for r, s, e in _segments(batch):
        padded = nll[r, : e - 1][mask[r, : e - 1]].mean().item()
        alone_nll, alone_mask = _per_example_loss(model, batch["input_ids"][r : r + 1, :e], batch["labels"][r : r + 1, :e])
        assert abs(padded - alone_nll[alone_mask].mean().item()) < 1e-4


def test_lm_head_on_labelled_positions_only_gives_the_same_log_probs(tiny_model, repo_root):
    import trl.trainer.utils as trl_utils

    from humpback.training import compat

    # another test's training may have patched it already: start from trl's own
    trl_utils._use_triton = getattr(trl_utils._use_triton, "_humpback_original", trl_utils._use_triton)
    original = trl_utils._use_triton
    try:
        trainer = _trainer(tiny_model, _examples(repo_root, tiny_model), per_device_train_batch_size=4)
        model = trainer.model.eval()
        batch = next(iter(trainer.get_train_dataloader()))
        with torch.no_grad():
            full = model(**batch, fused_lm_head=True)
            compat.lm_head_on_label_positions_only()
            assert trl_utils._use_triton is not original and trl_utils._use_triton(torch.device("cpu"))
            compact = model(**batch, fused_lm_head=True)
        assert full.label_mask.sum() > 0
        assert torch.allclose(full.log_probs, compact.log_probs, atol=1e-6)
        assert torch.allclose(full.loss, compact.loss, atol=1e-6)
        patched = trl_utils._use_triton
        compat.lm_head_on_label_positions_only()  # idempotent: never wraps twice
        assert trl_utils._use_triton is patched
    finally:
        trl_utils._use_triton = original


@pytest.mark.parametrize("packing", [False, True])
def test_bf16_training_on_cpu_saves_an_fp32_adapter(tiny_model, repo_root, tmp_path, packing):
    from safetensors import safe_open

    from humpback.config import ModelParams, TrainParams
    from humpback.training import train_lora

    examples = _examples(repo_root, tiny_model, 12)
    params = TrainParams(max_steps=2, per_device_train_batch_size=2, max_length=256, logging_steps=1, eval_steps=1,
                         lora_r=4, lora_alpha=8, packing=packing)
    losses = {}
    for dtype in ("float32", "bfloat16"):
        out = tmp_path / f"adapter-{dtype}"
        metrics = train_lora(ModelParams(base=tiny_model, dtype=dtype), params, examples[4:], examples[:4],
                             str(out), str(tmp_path / f"live-{dtype}"))
        losses[dtype] = metrics
        assert metrics["steps"] == 2 and torch.isfinite(torch.tensor(metrics["train_loss"]))
        with safe_open(str(out / "adapter_model.safetensors"), "pt") as f:
            assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float32}
        assert json.load(open(out / "adapter_config.json"))["r"] == 4
    # bf16 rounds the frozen weights and the activations: the loss moves a little, not a lot
    assert abs(losses["bfloat16"]["train_loss"] - losses["float32"]["train_loss"]) < 0.05 * losses["float32"]["train_loss"]
    assert abs(losses["bfloat16"]["eval_loss"] - losses["float32"]["eval_loss"]) < 0.05 * losses["float32"]["eval_loss"]


def test_stage_run_reports_its_time_on_stderr_and_in_the_ignored_log(tmp_path, monkeypatch, capsys):
    from humpback import HumpbackError, stage

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["stages/rate.py"])
    stage.run(lambda: None)
    with pytest.raises(SystemExit):
        stage.run(lambda: (_ for _ in ()).throw(HumpbackError("boom")))
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("timings: rate ") and "(cpu: " in err[0] and "load: " in err[0]
    assert err[1:] == ["error: boom"]  # a failure stays one line
    log = (tmp_path / "logs" / "timings.log").read_text().splitlines()
    assert len(log) == 1 and "timings: rate" in log[0]
