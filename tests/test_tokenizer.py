"""The tokenizer rebuilt from a GGUF equals llama.cpp's tokenization of the same file."""

import json

import pytest

from cap_edge.errors import ModelLoadError
from cap_edge.tokenizer import gguf_fields, tokenizer_from_gguf

# multilingual text, digits, whitespace runs, code, emoji and special-token text
CORPUS = [
    "Hello world", "The capital of France is Paris.", "1234567 + 89 = 1234656", "3.14159 and 1,000,000 and -42",
    "  leading and   multiple   spaces\n\n\ttabs and trailing  ", "Ünïcödé: café, naïve, 日本語のテキスト, русский текст, العربية",
    "emoji 🎉🚀 end", "def f(x):\n    return x**2  # comment", "don't won't it's I'm we've they'll he'd",
    "<|im_start|>user\nWhat is 12 plus 30?<|im_end|>\n<|im_start|>assistant\n",
]


def _llama_cpp_ids(gguf_path, texts):
    from llama_cpp import Llama

    vocab = Llama(model_path=str(gguf_path), vocab_only=True, verbose=False)
    return [vocab.tokenize(t.encode(), add_bos=False, special=True) for t in texts]


@pytest.fixture
def tiny_gguf(tiny_dir, tmp_path):
    from exporters.gguf import export_gguf

    return export_gguf(tiny_dir, tmp_path / "g", "f32").path


def test_tiny_gguf_tokenizer_round_trips_and_equals_llama_cpp(tiny_gguf, tokenizer):
    fields = gguf_fields(tiny_gguf)
    tok = tokenizer_from_gguf(fields)
    texts = [t for t in CORPUS if "<|im" not in t]  # the tiny vocabulary has no chat tokens
    ours = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    assert ours == [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]  # the source tokenizer
    assert ours == _llama_cpp_ids(tiny_gguf, texts)
    assert [tok.decode(i) for i in ours] == texts
    assert tok(texts[0])["input_ids"] == ours[0]  # no silent BOS: the file says add_bos_token = false
    assert (tok.eos_token, tok.bos_token, tok.pad_token) == ("</s>", "<s>", "<pad>")


def test_converted_gguf_dir_keeps_special_ids_and_exports_them_back(tiny_gguf, tmp_path):
    from gguf import GGUFReader

    from cap_edge.gguf_import import gguf_to_hf_dir
    from cap_edge.config import PruneConfig
    from cap_edge.models import load_model
    from cap_edge.prune_io import save_pruned
    from cap_edge.pruning import prune_model
    from exporters.gguf import export_gguf

    conv = gguf_to_hf_dir(tiny_gguf, tmp_path / "conv")
    src = json.loads((conv / "cap_edge_source.json").read_text())
    assert src["keys"]["tokenizer.ggml.pre"] == "gpt-2" and src["keys"]["tokenizer.ggml.add_bos_token"] is False
    cfg = json.loads((conv / "config.json").read_text())
    assert (cfg["bos_token_id"], cfg["eos_token_id"]) == (1, 2)
    tc = json.loads((conv / "tokenizer_config.json").read_text())
    assert tc["tokenizer_class"] == "GPT2Tokenizer" and tc["eos_token"] == "</s>"
    lm = load_model(str(conv), device="cpu")
    rep = prune_model(lm.model, PruneConfig(method="magnitude", sparsity=0.3), progress=False)
    pruned = save_pruned(lm.model, lm.tokenizer, tmp_path / "p", rep, source_dir=lm.path)
    assert (pruned / "cap_edge_source.json").is_file()
    art = export_gguf(pruned, tmp_path / "out", "q8_0", {"pruning_method": "magnitude", "sparsity_pattern": "unstructured",
                                                          "sparsity": 0.3})
    f = {k: v.contents() for k, v in GGUFReader(art.path).fields.items() if k != "tokenizer.ggml.tokens"}
    assert f["tokenizer.ggml.eos_token_id"] == 2 and f["tokenizer.ggml.bos_token_id"] == 1
    assert f["tokenizer.ggml.pre"] == "gpt-2" and f["tokenizer.ggml.add_bos_token"] is False
    assert f["general.name"].endswith("magnitude unstructured 0.30") and "general.quantization_version" in f


def test_unknown_pre_tokenizer_is_refused(tiny_gguf):
    fields = dict(gguf_fields(tiny_gguf), **{"tokenizer.ggml.pre": "mystery"})
    with pytest.raises(ModelLoadError, match="'mystery' is not in the table"):
        tokenizer_from_gguf(fields)
    with pytest.raises(ModelLoadError, match="byte-level BPE"):
        tokenizer_from_gguf(dict(fields, **{"tokenizer.ggml.model": "llama"}))


def test_truncated_gguf_is_a_clear_error(tiny_gguf, tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(open(tiny_gguf, "rb").read()[:1000])
    with pytest.raises(ModelLoadError, match="could not read GGUF"):
        gguf_fields(bad)


@pytest.mark.slow
def test_embedded_tokenizer_equals_llama_cpp_on_the_source_gguf():
    from cap_edge.models import embedded_gguf_path

    path = embedded_gguf_path()
    tok = tokenizer_from_gguf(gguf_fields(path))
    ours = [tok(t, add_special_tokens=False)["input_ids"] for t in CORPUS]
    assert ours == _llama_cpp_ids(path, CORPUS)
    assert [tok.decode(i) for i in ours] == CORPUS
    assert tok("Hello world")["input_ids"] == [19556, 905]  # no BOS prepended
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id) == (1, 2, 2, 0)
    msgs = [{"role": "user", "content": "Hi"}]
    assert tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True).endswith(
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
