"""engine: vllm (humpback/engine/vllm.py) against the native engine, on a tiny random Llama with a LoRA adapter.

Runs only where vLLM is installed (scripts/setup-vllm, in its own CI step). One vLLM engine serves the
whole module, so its start-up (~20-30 s eager on 2 cores) is paid once.
"""

import os

import pytest

pytest.importorskip("vllm")

import torch  # noqa: E402

from humpback import HumpbackError, models, prompts  # noqa: E402

from humpback.curation.rater import rater_features, rater_suffixes
from humpback.config import ModelParams  # noqa: E402
from humpback.engine import Decoding, Engine  # noqa: E402
from humpback.engine.output_head import require_hidden_state  # noqa: E402
from humpback.engine.vllm import VllmEngine, open_vllm_engine  # noqa: E402

import tiny  # noqa: E402

from test_engine import RESPONSES  # noqa: E402  (tests/ is on sys.path: conftest.py)


@pytest.fixture(scope="module")
def tiny_lora(tmp_path_factory, repo_root):
    """A tiny Llama vLLM's CPU attention accepts (head size 32) and a random, non-zero LoRA adapter on it."""
    from peft import LoraConfig, get_peft_model

    base = tiny.build_model(str(tmp_path_factory.mktemp("tiny-vllm")), repo_root, hidden=128)
    adapter = str(tmp_path_factory.mktemp("tiny-vllm-adapter"))
    torch.manual_seed(1)
    peft_model = get_peft_model(models.load_model(base), LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], init_lora_weights=False))
    peft_model.save_pretrained(adapter, safe_serialization=True)
    models.load_tokenizer(base).save_pretrained(adapter)
    return base, adapter


@pytest.fixture(scope="module")
def engines(tiny_lora):
    base, adapter = tiny_lora
    fp32 = ModelParams(base=base, dtype="float32")
    vllm_engine = open_vllm_engine(base, fp32, batch_size=4, adapter=adapter, max_model_len=4096)
    native = Engine(models.load_model(base, adapter=adapter), models.load_tokenizer(adapter), "native", batch_size=4)
    yield vllm_engine, native
    vllm_engine.close()


def test_merged_model_is_written_once_in_the_cache(tiny_lora, engines):
    vllm_engine, _ = engines
    path = vllm_engine.llm.llm_engine.vllm_config.model_config.model
    assert path.startswith(models.cache_dir("models"))
    assert os.path.exists(os.path.join(path, "model.safetensors"))
    assert vllm_engine.fingerprint.startswith("vllm-")  # vLLM's results never share a key with the native engine's


@pytest.mark.parametrize("prefix", [prompts.BACKWARD_PREFIX, ""], ids=["shared-prefix", "no-prefix"])
def test_greedy_equals_the_native_engine(engines, prefix):
    vllm_engine, native = engines
    suffixes = [prompts.backward_suffix(r) for r in RESPONSES]
    decoding = Decoding(max_new_tokens=12)
    got = vllm_engine.generate(prefix, suffixes, decoding)
    assert got == native.generate(prefix, suffixes, decoding)
    assert any(got)


def test_next_token_probs_equal_the_native_engine(engines):
    vllm_engine, native = engines
    tok = native.tok
    head, suffixes, candidates = rater_suffixes(tok, [{"instruction": "Say something.", "response": r}
                                                               for r in RESPONSES])
    got = vllm_engine.next_token_probs(head, suffixes, candidates)
    want = native.next_token_probs(head, suffixes, candidates)
    for g, w in zip(got, want):
        assert g == pytest.approx(w, abs=1e-4)


def test_next_token_features_recover_the_hidden_state(engines):
    """The probe's inputs: digit log-probabilities, and the last-layer hidden state, recovered from vLLM's full
    log-probability vector, equal the native engine's."""
    vllm_engine, native = engines
    head, suffixes, candidates = rater_suffixes(native.tok, [{"instruction": "Say something.", "response": r}
                                                                      for r in RESPONSES])
    assert vllm_engine.supports_hidden_state
    feats = vllm_engine.next_token_features(head, suffixes, candidates)
    ref = native.next_token_features(head, suffixes, candidates)
    for f, r in zip(feats, ref):
        assert torch.tensor(f["logprobs"]).exp().tolist() == pytest.approx(torch.tensor(r["logprobs"]).exp().tolist(),
                                                                            abs=1e-4)
        assert f["hidden"] == pytest.approx(r["hidden"], abs=1e-3)
        assert torch.nn.functional.cosine_similarity(torch.tensor(f["hidden"]), torch.tensor(r["hidden"]), 0) > 0.99999


def test_probe_features_equal_the_native_engine(engines):
    """Everything curation.scoring: probe reads (digit log-probabilities, hidden state, relevance)."""
    vllm_engine, native = engines
    pairs = [{"instruction": "Say something useful.", "response": r} for r in RESPONSES]
    got = rater_features(vllm_engine, pairs, 16)
    want = rater_features(native, pairs, 16)
    for g, w in zip(got, want):
        assert g["relevance"] == pytest.approx(w["relevance"], abs=1e-4)
        assert g["hidden"] == pytest.approx(w["hidden"], abs=1e-3)


def test_without_a_hidden_state_the_probe_is_refused_with_a_clear_error(engines):
    vllm_engine, native = engines
    # the same vLLM engine, opened as with hidden_state=False: digit log-probabilities only
    no_hidden = VllmEngine(vllm_engine.llm, vllm_engine.tok, vllm_engine.fingerprint, 4, None)
    head, suffixes, candidates = rater_suffixes(native.tok, [{"instruction": "Hi.", "response": "Hello."}])
    (feat,) = no_hidden.next_token_features(head, suffixes, candidates)
    (ref,) = native.next_token_features(head, suffixes, candidates)
    assert feat["logprobs"] == pytest.approx(ref["logprobs"], abs=1e-4)
    with pytest.raises(HumpbackError, match="curation.scoring: probe"):
        feat["hidden"]
    with pytest.raises(HumpbackError, match="curation.scoring: probe"):
        {**feat, "relevance": 0.0}
    with pytest.raises(HumpbackError, match="engine: native"):
        require_hidden_state("probe", no_hidden)
    require_hidden_state("expected", no_hidden)
    require_hidden_state("probe", vllm_engine)


def test_continuation_logprobs_equal_the_native_engine(engines):
    vllm_engine, native = engines
    heads = ["Paris is the capital.", "It boils at 100 C.", ""]
    prompts_ = ["Question: capital of France?\n", "Question: boiling point?\n", "Question: nothing\n"]
    got = vllm_engine.continuation_logprobs("System: be brief.\n", prompts_, heads)
    want = native.continuation_logprobs("System: be brief.\n", prompts_, heads)
    for g, w in zip(got, want):
        assert g["tokens"] == w["tokens"]
        assert g["logprob"] == pytest.approx(w["logprob"], abs=1e-3)


def test_result_cache_serves_a_rerun(engines):
    vllm_engine, _ = engines
    suffixes = [prompts.backward_suffix(r + " (cache test)") for r in RESPONSES]
    first = vllm_engine.generate(prompts.BACKWARD_PREFIX, suffixes, Decoding(max_new_tokens=6))
    before = dict(vllm_engine.stats)
    again = vllm_engine.generate(prompts.BACKWARD_PREFIX, suffixes, Decoding(max_new_tokens=6))
    assert again == first
    assert vllm_engine.stats["computed"] == before["computed"]  # nothing computed the second time
    assert vllm_engine.stats["cached"] == before["cached"] + len(suffixes)


def test_prefix_caching_serves_the_shared_prefix(engines):
    vllm_engine, native = engines
    assert vllm_engine.llm.llm_engine.vllm_config.cache_config.enable_prefix_caching
    head, suffixes, candidates = rater_suffixes(
        native.tok, [{"instruction": f"Prefix test {i}.", "response": r} for i, r in enumerate(RESPONSES)])
    before = dict(vllm_engine.stats)
    vllm_engine.next_token_probs(head, suffixes, candidates)
    computed = vllm_engine.stats["prompt_tokens_computed"] - before["prompt_tokens_computed"]
    full = vllm_engine.stats["prompt_tokens_full"] - before["prompt_tokens_full"]
    prefix_tokens = len(native.tok(head)["input_ids"])
    # every prompt but the first finds the few-shot prefix cached (vLLM caches whole blocks of 16 tokens)
    assert full - computed >= (len(suffixes) - 1) * (prefix_tokens // 16) * 16 > 0


def test_sampling_is_seeded_per_prompt(engines):
    vllm_engine, _ = engines
    suffixes = [prompts.backward_suffix(r) for r in RESPONSES]
    decoding = Decoding(max_new_tokens=8, do_sample=True, temperature=0.7, top_p=0.9, seed=3)
    all_six = vllm_engine.generate(prompts.BACKWARD_PREFIX, suffixes, decoding)
    vllm_engine.cache = None  # recompute: the same prompt draws the same tokens in another company
    try:
        assert vllm_engine.generate(prompts.BACKWARD_PREFIX, suffixes[2:4], decoding) == all_six[2:4]
    finally:
        from humpback.engine import ResultCache

        vllm_engine.cache = ResultCache.default()


def test_self_augment_stage_on_vllm_writes_what_the_native_engine_writes(tmp_path_factory, repo_root):
    """launch.engine is a param of self_augment: switching it reruns that stage (and what follows),
    and at fp32 vLLM's greedy instructions are the native engine's, byte for byte."""
    model = tiny.build_model(str(tmp_path_factory.mktemp("tiny-vllm-ws-model")), repo_root, hidden=128)
    ws = tiny.make_workspace(str(tmp_path_factory.mktemp("ws-vllm")), repo_root, model, **{"model.dtype": "float32"})
    tiny.run(["dvc", "repro", "self_augment"], ws)
    with open(os.path.join(ws, "data/self_augmented.json"), "rb") as f:
        native = f.read()
    tiny.set_params(ws, **{"launch.engine": "vllm"})
    proc = tiny.run(["dvc", "repro", "self_augment"], ws)
    assert tiny.ran_stages(proc.stdout) == ["self_augment"]
    assert "vllm-" in proc.stderr or "vLLM" in proc.stderr or "engine start-up" in proc.stderr
    with open(os.path.join(ws, "data/self_augmented.json"), "rb") as f:
        assert f.read() == native
