"""ONNX export through optimum (``text-generation-with-past``: incremental decoding with a KV
cache in ONNX Runtime, loadable by optimum's ORTModelForCausalLM), then precision conversion.

Precisions: fp32; fp16 (float16 conversion of the fp32 graph); int8 and int4: weight-only
``MatMulNBits`` (symmetric blocks of 32, so a pruned zero stays exactly zero; checked). Weights over 2 GB go
to external data (``model.onnx_data``).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np

from cap_edge.errors import ExportError

from .bundle import HF_SIDE_FILES as SIDE_FILES  # beside model.onnx: optimum and tokenizers load the folder
from .bundle import Artifact, move_into

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8", "int4")
EXTERNAL_DATA_THRESHOLD = 2 * 1024**3  # protobuf's 2 GB limit


def _save(model, path: Path) -> list[Path]:
    import onnx

    size = sum(np.prod(t.dims) * 4 for t in model.graph.initializer)
    if size > EXTERNAL_DATA_THRESHOLD:
        onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + "_data", size_threshold=1024)
        return [path, path.with_name(path.name + "_data")]
    onnx.save_model(model, path)
    return [path]


def _fp32_export(model_dir: Path, work: Path, kv_layout: str = "dynamic") -> Path:
    from optimum.exporters.onnx import main_export
    from cap_edge.models import load_config
    from cap_edge.structure import is_structured

    if is_structured(load_config(model_dir)) or kv_layout != "dynamic":
        # per-layer head counts: optimum's dummy KV cache assumes one head count, so use the
        # explicit-cache graph (same input/output names, driven by the same runtime)
        import torch

        from cap_edge.models import load_weights

        from .onnx_kv import export_kv_graph

        work.mkdir(parents=True, exist_ok=True)
        export_kv_graph(load_weights(model_dir, torch.float32), work / "model.onnx", kv_layout)
        for extra in SIDE_FILES:
            if (model_dir / extra).is_file():
                shutil.copy(model_dir / extra, work / extra)
        return work / "model.onnx"
    try:
        main_export(str(model_dir), output=str(work), task="text-generation-with-past", device="cpu",
                    do_validation=False)
    except Exception as e:  # optimum raises many types; name the model and the cause
        raise ExportError(f"optimum could not export {model_dir} to ONNX: {e}") from e
    path = work / "model.onnx"
    if not path.is_file():
        raise ExportError(f"optimum produced no model.onnx in {work}")
    return path


def runs_on(model_dir: Path) -> dict:
    """Which runtimes load this ONNX graph, for the manifest: the explicit-cache graph of a
    structured model has per-layer K/V shapes that optimum's generate cannot feed."""
    from cap_edge.models import load_config
    from cap_edge.structure import is_structured

    if is_structured(load_config(model_dir)):
        return {"runtimes": ["onnxruntime (cap-edge runtimes.onnxruntime: explicit per-layer K/V inputs)"],
                "not": ["optimum ORTModelForCausalLM (one K/V head count for every layer)"],
                "instead": "the genai format for onnxruntime-genai apps"}
    return {"runtimes": ["onnxruntime", "optimum ORTModelForCausalLM"], "not": [], "instead": ""}


def _metadata(model, meta: dict) -> None:
    import onnx

    for k, v in meta.items():
        p = onnx.StringStringEntryProto(key=f"cap_edge.{k}", value=str(v))
        model.metadata_props.append(p)


def convert(src: Path, precision: str):
    """The fp32 graph at ``src`` in ``precision`` (an onnx.ModelProto)."""
    import onnx

    if precision == "fp32":
        return onnx.load(src)
    if precision == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        return convert_float_to_float16(onnx.load(src), keep_io_types=False, disable_shape_infer=True,
                                        op_block_list=["SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization"])
    # Weight-only MatMulNBits (8 or 4 bits, symmetric blocks of 32: zero stays zero), activations
    # stay float. ONNX Runtime's dynamic int8 quantization (activations to uint8 per tensor)
    # measured mean KL 0.89-1.24 and top-1 0.27-0.65 on the pruned SmolLM2 (activation outliers),
    # weight-only int8 0.002-0.005 and 0.94.
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    qz = MatMulNBitsQuantizer(onnx.load(src), bits=8 if precision == "int8" else 4, block_size=32, is_symmetric=True)
    qz.process()
    return qz.model.model


def export_onnx(model_dir: str | Path, out_dir: str | Path, precision: str = "fp32", metadata: dict | None = None) -> Artifact:
    if precision not in PRECISIONS:
        raise ExportError(f"ONNX precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".onnx-") as tmp:
        work = Path(tmp)
        src = _fp32_export(model_dir, work / "fp32")
        final = work / f"model.{precision}.onnx"
        m = convert(src, precision)
        _metadata(m, {"precision": precision, **(metadata or {})})
        files = _save(m, final)
        zeros = pruned_zeros_kept(src, final) if precision in ("int8", "int4") else None
        placed = move_into(files, out_dir)
        for extra in SIDE_FILES:
            if (src.parent / extra).is_file() and not (out_dir / extra).exists():
                shutil.copy(src.parent / extra, out_dir / extra)
    meta = dict(metadata or {}, runs_on=runs_on(model_dir))
    if zeros is not None:
        meta["quantized_zeros"] = zeros
        if not zeros["ok"] and zeros["checked_weights"]:
            raise ExportError(f"ONNX {precision}: quantization turned pruned zeros non-zero in {zeros['zeros_broken_in'][:3]}")
    return Artifact("onnx", precision, str(placed[0]), [str(p) for p in placed], metadata=meta)


def pruned_zeros_kept(fp32_path: str | Path, quant_path: str | Path) -> dict:
    """For each weight of the fp32 graph with exact zeros, check the quantized graph keeps them zero.

    Reads MatMulNBits initializers (``NAME_Q8``: one uint8 per value, zero point 128; ``NAME_Q4``:
    two uint4 per byte, zero point 8) and checks the stored integer equals the zero point.
    """
    import onnx
    from onnx import numpy_helper

    ref = {t.name: numpy_helper.to_array(t) for t in onnx.load(fp32_path).graph.initializer if t.data_type == 1}
    qm = onnx.load(quant_path)
    inits = {t.name: numpy_helper.to_array(t) for t in qm.graph.initializer}
    checked, broken = 0, []
    for name, w in ref.items():
        if w.ndim != 2 or not (w == 0).any():
            continue
        deq = None
        for bits in (8, 4):
            qname = f"{name}_Q{bits}"
            if qname not in inits:
                continue
            node = next(n for n in qm.graph.node if n.op_type == "MatMulNBits" and n.input[1] == qname)
            attrs = {a.name: a.i for a in node.attribute}
            K, N = attrs["K"], attrs["N"]
            packed = inits[qname].reshape(N, -1)  # (N, blocks * bytes per block)
            if bits == 8:
                vals = packed[:, :K].astype(np.int32)
            else:
                lo, hi = packed & 0x0F, packed >> 4
                vals = np.stack([lo, hi], axis=-1).reshape(N, -1)[:, :K].astype(np.int32)  # (N, K)
            deq = (vals == (1 << (bits - 1))).T  # (K, N) like the fp32 MatMul weight; True where zero
        if deq is None:
            continue
        checked += 1
        if not deq[w == 0].all():
            broken.append(name)
    return {"checked_weights": checked, "zeros_broken_in": broken, "ok": checked > 0 and not broken}
