"""Fixed-shape prefill/decode ONNX, static QDQ quantization, the fixed-shape driver, op coverage."""

import numpy as np
import onnx
import pytest
import torch

from cap_edge.config import PruneConfig
from cap_edge.errors import ConfigError
from cap_edge.prune_io import save_pruned
from cap_edge.pruning import prune_model
from exporters.onnx_kv import export_kv_graph
from exporters.onnx_static import dynamic_dims, export_static
from exporters.op_coverage import check_ops, load_op_table
from runtimes.onnx_static import StaticKVLM
from runtimes.onnxruntime import OnnxCausalLM

from conftest import make_tiny_llama, make_tokenizer

CALIB = [list(range(10, 22)), list(range(40, 70)), list(range(100, 119))]


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    d = tmp_path_factory.mktemp("static")
    model, tok = make_tiny_llama(), make_tokenizer()
    rep = prune_model(model, PruneConfig(method="magnitude", sparsity=0.5), progress=False)
    return save_pruned(model, tok, d / "pruned", rep), model


def test_graphs_have_no_dynamic_dimensions(pruned, tmp_path):
    d, _ = pruned
    art = export_static(d, tmp_path, "fp32", chunk=8, context=32)
    for g in ("prefill", "decode"):
        path = tmp_path / "static-fp32" / f"{g}.onnx"
        assert dynamic_dims(path) == []
        for v in list(onnx.load(str(path)).graph.input):
            assert all(x.HasField("dim_value") and x.dim_value > 0 for x in v.type.tensor_type.shape.dim)
    ins = {i.name: i for i in onnx.load(art.path).graph.input}
    assert [x.dim_value for x in ins["attention_mask"].type.tensor_type.shape.dim] == [1, 40]  # C + chunk
    # the check is not vacuous: the dynamic-shape export is flagged
    export_kv_graph(pruned[1], tmp_path / "dyn.onnx")
    assert any("dim" in b for b in dynamic_dims(tmp_path / "dyn.onnx"))


def test_fixed_shape_driver_equals_dynamic_fp32(pruned, tmp_path):
    d, model = pruned
    art = export_static(d, tmp_path, "fp32", chunk=8, context=48)
    static = StaticKVLM(art.path, eos_token_id=2)
    export_kv_graph(model, tmp_path / "dyn.onnx")
    dyn = OnnxCausalLM(tmp_path / "dyn.onnx", eos_token_id=2)
    prompt = list(range(30, 49))  # 19 tokens: three prefill chunks, the last padded
    assert static.greedy([prompt], 16) == dyn.greedy([prompt], 16)
    assert len(static.greedy([prompt], 16)[0]) > 0
    reqs = [(prompt, [5, 6, 7]), (prompt, [9]), (prompt, list(range(60, 72)))]
    assert np.allclose(static.loglik(reqs), dyn.loglik(reqs), atol=1e-3)
    with torch.no_grad():
        ref = model(torch.tensor([prompt])).logits[0].numpy()
    assert np.abs(static.logits(prompt) - ref).max() < 1e-4
    with pytest.raises(ValueError, match="exceeds the fixed context"):
        static.logits(list(range(10, 70)))


@pytest.mark.parametrize("precision", ["qdq8", "qdq16"])
def test_static_qdq_keeps_pruned_zeros_and_tracks_fp32(pruned, tmp_path, precision):
    d, model = pruned
    art = export_static(d, tmp_path, precision, chunk=8, context=32, calibration=CALIB)
    z = art.metadata["quantized_zeros"]
    assert z["ok"] and z["checked_weights"] >= 14 and not z["zeros_broken_in"]
    ops = {n.op_type for n in onnx.load(art.path).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ format
    prompt = list(range(30, 45))
    with torch.no_grad():
        ref = model(torch.tensor([prompt])).logits[0].numpy()
    got = StaticKVLM(art.path).logits(prompt)
    assert (got.argmax(-1) == ref.argmax(-1)).mean() >= 0.6


def test_keep_float_leaves_named_nodes_unquantized(pruned, tmp_path):
    d, _ = pruned
    art = export_static(d, tmp_path, "qdq8", chunk=8, context=32, calibration=CALIB, keep_float=["lm_head"])
    assert art.metadata["float_nodes"]["prefill"] >= 1
    g = onnx.load(art.path).graph
    head = [n for n in g.node if "lm_head" in n.name and n.op_type == "MatMul"]
    inits = {t.name: t.data_type for t in g.initializer}
    assert head and inits.get(head[0].input[1]) == onnx.TensorProto.FLOAT  # its weight stays float
    other = [n for n in g.node if "down_proj" in n.name and n.op_type == "MatMul"][0]
    producers = {o: n.op_type for n in g.node for o in n.output}
    assert producers.get(other.input[1]) == "DequantizeLinear"  # while the others are int8 + DQ


def test_op_coverage_flags_ops_missing_from_the_table(pruned, tmp_path):
    d, _ = pruned
    art = export_static(d, tmp_path, "fp32", chunk=8, context=32, op_table="qnn-htp")
    assert art.metadata["op_coverage"]["prefill"]["ok"]  # our graph uses only QNN-listed ops
    table = load_op_table("qnn-htp")
    table = {**table, "ops": {k: v for k, v in table["ops"].items() if k != "ai.onnx:Softmax"}}
    table["ops"].pop("ai.onnx:Sigmoid")
    rep = check_ops(art.path, table)
    assert not rep["ok"] and set(rep["unsupported"]) == {"ai.onnx:Sigmoid"}
    assert rep["unsupported"]["ai.onnx:Sigmoid"]["count"] == 2  # SiLU in each of the 2 layers
    assert any("mlp" in n for n in rep["unsupported"]["ai.onnx:Sigmoid"]["nodes"])
    with pytest.raises(ConfigError, match="not found"):
        load_op_table("no-such-npu")


def test_tied_embedding_table_is_stored_once(tmp_path):
    """SmolLM2 ties its output layer to the embeddings: the explicit-cache graph keeps one table."""
    model = make_tiny_llama(tie_word_embeddings=True)
    model.tie_weights()
    for layout, kw in (("dynamic", {}), ("static", {"tokens": 4, "cache": 16})):
        path = tmp_path / f"{layout}.onnx"
        export_kv_graph(model, path, layout, **kw)
        tables = [t for t in onnx.load(str(path)).graph.initializer if model.config.vocab_size in t.dims]
        assert len(tables) == 1
    ids = list(range(5, 17))
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0].numpy()
    assert np.abs(OnnxCausalLM(tmp_path / "dynamic.onnx").logits(ids) - ref).max() < 1e-4
