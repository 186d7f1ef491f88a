"""onnxruntime-genai folders: load with og.Model, tokenize like Hugging Face, generate like PyTorch."""

import json

import numpy as np
import pytest
import torch

from cap_edge.deploy.export import export_artifact
from cap_edge.prune_io import save_pruned
from cap_edge.structure import LayerStructure, apply_structure

from conftest import make_tiny_llama, make_tokenizer

og = pytest.importorskip("onnxruntime_genai", reason="the genai format needs onnxruntime-genai (pip install '.[genai]')")


def _generate(folder, ids, n):
    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + n, do_sample=False)
    gen = og.Generator(model, params)
    gen.append_tokens(np.asarray(ids, dtype=np.int32))
    out = []
    while not gen.is_done():
        gen.generate_next_token()
        out.append(int(gen.get_next_tokens()[0]))
    return out


def _torch_greedy(model, ids, n):
    return model.generate(torch.tensor([ids]), max_new_tokens=n, min_new_tokens=n, do_sample=False, eos_token_id=None,
                          pad_token_id=0)[0, len(ids):].tolist()


@pytest.mark.parametrize("precision", ["fp32", "int4"])
def test_genai_folder_loads_tokenizes_and_generates(tiny_dir, tmp_path, precision):
    art = export_artifact(tiny_dir, "genai", precision, tmp_path / "out")
    folder = tmp_path / "out" / f"genai-{precision}"
    assert art.valid and art.validation["tokenizer_equal"]
    assert {"model.onnx", "genai_config.json", "tokenizer.json", "tokenizer_config.json"} <= {p.name for p in folder.iterdir()}
    cfg = json.loads((folder / "genai_config.json").read_text())["model"]
    assert cfg["eos_token_id"] == 2 and cfg["decoder"]["num_key_value_heads"] == 2
    tok = og.Tokenizer(og.Model(str(folder)))
    text = "the cat in the hat"
    assert [int(t) for t in tok.encode(text)] == make_tokenizer()(text, add_special_tokens=False)["input_ids"]
    ids = make_tokenizer()(text, add_special_tokens=False)["input_ids"]
    got = _generate(folder, ids, 12)
    if precision == "fp32":
        assert got == _torch_greedy(make_tiny_llama(), ids, 12) and art.validation["greedy_equal"]
    else:
        assert len(got) == 12 and art.validation["mean_kl"] <= 0.5 and art.metadata["quantized_zeros"]["checked_weights"] == 0


def test_structured_genai_folder_with_uneven_heads_and_an_attention_free_layer(tmp_path):
    model, tok = make_tiny_llama(num_hidden_layers=3), make_tokenizer()
    apply_structure(model, [LayerStructure((0, 2), (0, 1), tuple(range(128))), LayerStructure((2, 3), (1,), tuple(range(64))),
                            LayerStructure((), (), tuple(range(96)))], allow_empty=True)
    d = save_pruned(model, tok, tmp_path / "st", {"method": "test", "pattern": "structured", "achieved_sparsity": 0.2})
    art = export_artifact(d, "genai", "fp32", tmp_path / "out")
    assert art.valid and art.validation["greedy_equal"] and art.metadata["genai_layout"] == "padded"
    ids = tok("the cat", add_special_tokens=False)["input_ids"]
    from cap_edge.models import load_weights

    assert _generate(tmp_path / "out" / "genai-fp32", ids, 10) == _torch_greedy(load_weights(d), ids, 10)


def test_genai_tokenizer_mismatch_fails_validation(tiny_dir, tmp_path, monkeypatch):
    from runtimes.genai import GenaiLM

    monkeypatch.setattr(GenaiLM, "tokenize", lambda self, text: [0])
    from cap_edge.errors import ValidationError

    with pytest.raises(ValidationError, match="tokenizer ids"):
        export_artifact(tiny_dir, "genai", "fp32", tmp_path / "out")


@pytest.mark.slow
def test_embedded_model_genai_generates_like_pytorch(tmp_path, monkeypatch):
    from cap_edge.models import embedded_model_dir, load_model

    monkeypatch.delenv("CAP_EDGE_CACHE", raising=False)
    d = embedded_model_dir()
    art = export_artifact(d, "genai", "int4", tmp_path / "out")
    assert art.valid and art.validation["tokenizer_equal"]
    lm = load_model(None, device="cpu")
    prompt = lm.tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                              tokenize=False, add_generation_prompt=True)
    ids = lm.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    text = lm.tokenizer.decode(_generate(tmp_path / "out" / "genai-int4", ids, 16), skip_special_tokens=True)
    assert "Paris" in text
