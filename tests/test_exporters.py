import json

import numpy as np
import pytest
import torch

from cap_edge.config import PruneConfig
from cap_edge.errors import ExportError, ValidationError
from cap_edge.deploy.export import export_artifact
from cap_edge.prune_io import save_pruned
from cap_edge.pruning import prune_model

from conftest import make_tiny_llama, make_tokenizer


@pytest.fixture
def pruned_dir(tmp_path):
    model, tok = make_tiny_llama(), make_tokenizer()
    rep = prune_model(model, PruneConfig(method="magnitude", pattern="2:4"), progress=False)
    return save_pruned(model, tok, tmp_path / "pruned", rep)


@pytest.mark.parametrize("precision", ["fp32", "int8", "int4"])
def test_onnx_round_trip(pruned_dir, tmp_path, precision):
    art = export_artifact(pruned_dir, "onnx", precision, tmp_path / "out")
    assert art.valid and art.validation["passed"]
    if precision == "fp32":
        assert art.validation["greedy_equal"] and art.validation["max_abs_logit_diff"] < 1e-3
    else:
        assert art.metadata["quantized_zeros"]["ok"]  # pruned weights stay exactly zero
    man = json.loads((tmp_path / "out" / "manifest.json").read_text())
    entry = man["artifacts"][0]
    assert entry["sha256"] and entry["bytes"] > entry["compressed_bytes"] > 0
    import onnx

    props = {p.key: p.value for p in onnx.load(art.path, load_external_data=False).metadata_props}
    assert props["cap_edge.sparsity_pattern"] == "2:4"


def test_onnx_loads_in_optimum(pruned_dir, tmp_path):
    from optimum.onnxruntime import ORTModelForCausalLM

    from transformers import AutoModelForCausalLM

    art = export_artifact(pruned_dir, "onnx", "fp32", tmp_path / "out")
    m = ORTModelForCausalLM.from_pretrained(tmp_path / "out", file_name=art.path.split("/")[-1])
    prompt = torch.tensor([[5, 6, 7]])
    kw = dict(max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0)
    ours = m.generate(prompt, min_new_tokens=8, **kw)
    ref = AutoModelForCausalLM.from_pretrained(pruned_dir).generate(prompt, min_new_tokens=8, **kw)
    assert ours.shape == (1, 11) and torch.equal(ours, ref)  # optimum's generate on the file = PyTorch
    assert "optimum ORTModelForCausalLM" in art.metadata["runs_on"]["runtimes"]


@pytest.mark.parametrize("precision", ["f32", "f16", "q8_0", "q4_0"])
def test_gguf_written_read_back_and_loaded(pruned_dir, tmp_path, precision):
    from transformers import AutoConfig, AutoModelForCausalLM

    from exporters.gguf import read_back

    from exporters import get_spec
    from exporters.bundle import resolve

    art = export_artifact(pruned_dir, "gguf", precision, tmp_path / "out")  # every precision passes on this model
    entry = resolve(json.loads((tmp_path / "out" / "manifest.json").read_text())["artifacts"][0], tmp_path / "out")
    assert entry["valid"] is True and entry["path"] == art.path and entry["sha256"] == art.sha256
    spec, v = get_spec("gguf", precision), art.validation
    assert v[spec.metric] <= spec.tolerance and v["top1_agreement_decisive"] >= spec.min_top1
    cfg = AutoConfig.from_pretrained(pruned_dir)
    sd = {k: v.numpy() for k, v in AutoModelForCausalLM.from_pretrained(pruned_dir).state_dict().items()}
    back = read_back(art.path, cfg)
    if precision == "f32":  # every tensor equal to the source after the inverse permutation
        assert all(np.array_equal(back[k], sd[k]) for k in back) and len(back) == 2 * 9 + 2 + 1
    if precision in ("q8_0", "q4_0"):
        assert art.metadata["quantized_zeros"]["ok"]
    if precision in ("f32", "f16"):
        assert art.validation["greedy_equal"]


def test_llamacpp_extra_buffers_follow_the_build_and_the_override(pruned_dir, tmp_path):
    """A natively built llama.cpp with AMX loads without extra buffer types (their AMX kernels fault where
    the VM grants no tile state), unless the environment says the host runs AMX; the load-time wrapper
    sets the parameter for that one load and puts llama-cpp-python's default back."""
    import llama_cpp
    import llama_cpp.llama_cpp as C

    from runtimes import llamacpp as R

    def default(info: str, env: str | None = None) -> bool:
        R.extra_buffers_default.cache_clear()
        with pytest.MonkeyPatch.context() as mp:  # its own context: the fixture's cache isolation stays in place
            mp.setattr(llama_cpp, "llama_print_system_info", lambda: info.encode())
            if env is None:
                mp.delenv(R.EXTRA_BUFFERS_ENV, raising=False)
            else:
                mp.setenv(R.EXTRA_BUFFERS_ENV, env)
            try:
                return R.extra_buffers_default()
            finally:
                R.extra_buffers_default.cache_clear()

    assert default("CPU : AVX2 = 1 | AMX_INT8 = 1 | REPACK = 1 |") is False
    assert default("CPU : AVX2 = 1 | REPACK = 1 |") is True
    assert default("CPU : AMX_INT8 = 1 |", env="1") is True and default("CPU : AVX2 = 1 |", env="0") is False
    with pytest.raises(ValueError, match="expected 0 or 1, got 'yes'"):
        default("CPU : AVX2 = 1 |", env="yes")

    art = export_artifact(pruned_dir, "gguf", "q8_0", tmp_path / "out")
    off = R.LlamaCppLM(art.path, n_ctx=64, n_threads=1, extra_buffers=False)
    assert off.llm.model_params.use_extra_bufts is False
    assert C.llama_model_default_params().use_extra_bufts is True  # the wrapper is gone after the load
    auto = R.LlamaCppLM(art.path, n_ctx=64, n_threads=1)
    assert auto.extra_buffers is R.extra_buffers_default() and auto.llm.model_params.use_extra_bufts is auto.extra_buffers
    ids = [5, 6, 7, 8, 9, 10]
    assert np.allclose(off.logits(ids), auto.logits(ids), atol=1e-4)  # repacking changes layout, not results
    build = R.build_info()  # every benchmark result records the llama.cpp build and loading its GGUF figures had
    assert build["extra_buffers"] is R.extra_buffers_default() and build["features"] and build["version"]


def test_gguf_metadata_and_tokenizer(pruned_dir, tmp_path):
    from gguf import GGUFReader

    art = export_artifact(pruned_dir, "gguf", "f16", tmp_path / "out")
    f = GGUFReader(art.path).fields
    assert f["cap_edge.sparsity_pattern"].contents() == "2:4"
    assert f["tokenizer.ggml.model"].contents() == "gpt2"
    assert len(f["tokenizer.ggml.tokens"].contents()) == len(make_tokenizer())
    assert f["llama.attention.head_count_kv"].contents() == 2


def test_failed_validation_is_typed_and_marked_invalid(pruned_dir, tmp_path, monkeypatch):
    import dataclasses

    from exporters.formats import FORMATS

    # tighter than float32 round-off
    monkeypatch.setitem(FORMATS, ("onnx", "fp32"), dataclasses.replace(FORMATS[("onnx", "fp32")], tolerance=1e-12))
    with pytest.raises(ValidationError) as e:
        export_artifact(pruned_dir, "onnx", "fp32", tmp_path / "out")
    assert "model.fp32.onnx" in str(e.value) and e.value.metric == "max_abs_logit_diff"
    assert e.value.tolerance == 1e-12 and e.value.value > 1e-12
    man = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert man["artifacts"][0]["valid"] is False and "error" in man["artifacts"][0]["validation"]


def test_non_llama_or_missing_tokenizer_is_clear(pruned_dir, tmp_path):
    from exporters.gguf import export_gguf

    (pruned_dir / "tokenizer.json").unlink()
    with pytest.raises(ExportError, match="tokenizer"):
        export_gguf(pruned_dir, tmp_path / "o", "f16")
    cfg = json.loads((pruned_dir / "config.json").read_text())
    cfg["model_type"] = "qwen2"
    (pruned_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ExportError, match="GGUF export supports .*llama.*got .qwen2."):
        export_gguf(pruned_dir, tmp_path / "o", "f16")
    with pytest.raises(ExportError, match="precision"):
        from exporters import get_spec

        get_spec("onnx", "q4_0")


def test_q4_0_keeps_sensitive_tensors_q8_0(pruned_dir, tmp_path):
    from gguf import GGMLQuantizationType as Q
    from gguf import GGUFReader

    from exporters.gguf import Q4_0_WIDE, export_gguf

    mixed = export_gguf(pruned_dir, tmp_path / "m", "q4_0")
    types = {t.name: t.tensor_type for t in GGUFReader(mixed.path).tensors}
    assert types["blk.0.attn_q.weight"] == Q.Q4_0 and types["blk.0.ffn_up.weight"] == Q.Q4_0
    assert all(types[f"blk.0.{n}.weight"] == Q.Q8_0 for n in Q4_0_WIDE)
    assert mixed.metadata["q8_0_tensors"] == list(Q4_0_WIDE)
    pure = export_gguf(pruned_dir, tmp_path / "p", "q4_0", wide=())
    blk = [t for t in GGUFReader(pure.path).tensors if t.name.startswith("blk.") and "norm" not in t.name]
    assert blk and all(t.tensor_type == Q.Q4_0 for t in blk)
