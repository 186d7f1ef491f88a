"""Fixed-shape, statically quantized (QDQ) ONNX for NPU execution providers (QNN HTP and similar).

Two graphs, batch 1, every dimension fixed (``onnx_kv.KVGraph`` static layout):
``prefill.onnx`` takes a chunk of ``chunk`` tokens (padded and masked), ``decode.onnx`` one token;
both read a KV cache of ``context`` slots and return only the new entries, which the driver
(``runtimes.onnx_static``) writes into its cache buffer.

Precisions: ``fp32`` (unquantized, the reference for the fixed-shape driver), ``qdq8`` (uint8
activations, int8 weights) and ``qdq16`` (uint16 activations, int8 weights; more accurate, as
phone NPUs also run). Quantization is ``onnxruntime.quantization`` static QDQ through its QNN
configuration helper (``get_qnn_qdq_config``), calibrated by running the fp32 graphs over the
calibration prompts CAP used. Weights are symmetric (zero point 0), so a pruned weight stays
exactly zero; checked on the quantized initializers. Nodes whose name contains an entry of
``keep_float`` stay in float (mixed precision, from the device profile).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from cap_edge.errors import ExportError

from .bundle import Artifact, move_into

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "qdq8", "qdq16")


def dynamic_dims(path: str | Path) -> list[str]:
    """Every graph input, output and (inferred) intermediate value whose shape is not fully fixed."""
    import onnx

    m = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    bad = []
    for kind, values in (("input", m.graph.input), ("output", m.graph.output), ("value", m.graph.value_info)):
        for v in values:
            t = v.type.tensor_type
            if not t.HasField("shape"):
                bad.append(f"{kind} {v.name}: unknown rank")
                continue
            for i, d in enumerate(t.shape.dim):
                if not d.HasField("dim_value") or d.dim_value < 0:
                    bad.append(f"{kind} {v.name}: dim {i} is {d.dim_param or '?'}")
    return bad


def calibration_sequences(tokenizer, problems, tokens_per_problem: int | None = None) -> list[list[int]]:
    """The token sequences CAP calibrates on: prompt + gold answer, same formatting, cut from the
    left to ``tokens_per_problem`` like the scoring batch."""
    from cap_edge.prompts import encode_pair

    seqs = [ctx + ans for ctx, ans in (encode_pair(tokenizer, p, p.answer) for p in problems)]
    return [s[-tokens_per_problem:] for s in seqs] if tokens_per_problem else seqs


class _Reader:
    """onnxruntime CalibrationDataReader: feeds for one graph, produced on demand by running the fp32
    graphs through the fixed-shape driver over the calibration sequences (memory stays flat)."""

    def __init__(self, driver, sequences: Sequence[list[int]], which: str, decode_steps: int = 2):
        self.driver, self.sequences, self.which, self.decode_steps = driver, sequences, which, decode_steps
        self._it: Iterator[dict] | None = None

    def _feeds(self):
        for ids in self.sequences:
            ids = ids[: self.driver.context - self.decode_steps]
            k = min(self.decode_steps, max(1, len(ids) // 4))
            head, tail = ids[:-k], ids[-k:]
            for feed in self.driver.feeds(head, tail):
                if feed["_graph"] == self.which:
                    yield {n: v for n, v in feed.items() if n != "_graph"}

    def get_next(self):
        if self._it is None:
            self._it = self._feeds()
        feed = next(self._it, None)
        if feed is None:  # end of a pass: the next caller (config helper, calibrator) starts afresh
            self._it = None
        return feed

    def rewind(self):
        self._it = None


def quantized_zeros_kept_qdq(fp32_path: str | Path, qdq_path: str | Path) -> dict:
    """Every exact zero of an fp32 weight is exactly the zero point of its quantized initializer."""
    import onnx
    from onnx import numpy_helper

    ref = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(fp32_path)).graph.initializer if t.data_type == 1}
    q = onnx.load(str(qdq_path))
    inits = {t.name: t for t in q.graph.initializer}
    checked, broken = 0, []
    for node in q.graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in inits:
            continue
        qname = node.input[0]
        src = qname[: -len("_quantized")] if qname.endswith("_quantized") else None
        if src not in ref or ref[src].ndim != 2 or not (ref[src] == 0).any():
            continue
        vals = numpy_helper.to_array(inits[qname]).astype(np.int64)
        zp = numpy_helper.to_array(inits[node.input[2]]).astype(np.int64) if len(node.input) > 2 and node.input[2] in inits else 0
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if np.ndim(zp) == 1:  # per-channel zero points along `axis`
            shape = [1] * vals.ndim
            shape[axis] = -1
            zp = np.reshape(zp, shape)
        checked += 1
        if not (vals == zp)[ref[src] == 0].all():
            broken.append(src)
    return {"checked_weights": checked, "zeros_broken_in": broken, "ok": checked > 0 and not broken}


def export_static(model_dir: str | Path, out_dir: str | Path, precision: str = "qdq8", metadata: dict | None = None, *,
                  chunk: int = 64, context: int = 1024, keep_float: Sequence[str] = (),
                  calibration: Sequence[list[int]] | None = None, calibration_problems: int = 32,
                  op_table: str | None = None) -> Artifact:
    import onnx
    import torch
    from transformers import AutoTokenizer

    from cap_edge.models import load_weights
    from runtimes.onnx_static import StaticKVLM

    from .onnx_kv import export_kv_graph
    from .op_coverage import check_ops

    if precision not in PRECISIONS:
        raise ExportError(f"static ONNX precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    if chunk < 1 or context < chunk:
        raise ExportError(f"static ONNX: expected 1 <= chunk <= context, got chunk {chunk}, context {context}")
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = load_weights(model_dir, torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    sub = f"static-{precision}"
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".static-") as tmp:
        work = Path(tmp)
        fp32 = {g: work / "fp32" / f"{g}.onnx" for g in ("prefill", "decode")}
        fp32["prefill"].parent.mkdir()
        export_kv_graph(model, fp32["prefill"], "static", tokens=chunk, cache=context)
        export_kv_graph(model, fp32["decode"], "static", tokens=1, cache=context)
        for g, p in fp32.items():
            bad = dynamic_dims(p)
            if bad:
                raise ExportError(f"static ONNX {g} graph still has dynamic dimensions: {bad[:5]}")
        final = work / sub
        final.mkdir()
        meta = {"precision": precision, "chunk": chunk, "context": context, "keep_float": list(keep_float),
                **(metadata or {})}
        if precision == "fp32":
            for g, p in fp32.items():
                shutil.copy(p, final / p.name)
        else:
            from onnxruntime.quantization import QuantType, quantize
            from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config

            act = QuantType.QUInt8 if precision == "qdq8" else QuantType.QUInt16
            if calibration is None:
                from cap_edge.tasks import calibration_problems as embedded_calibration

                calibration = calibration_sequences(tok, embedded_calibration("embedded", calibration_problems))
            seqs = list(calibration)
            if not seqs:
                raise ExportError("static quantization needs calibration sequences; got none")
            driver = StaticKVLM(fp32["prefill"])
            excluded = {}
            for g, p in fp32.items():
                names = [n.name for n in onnx.load(str(p), load_external_data=False).graph.node
                         if any(k in n.name for k in keep_float)]
                excluded[g] = len(names)
                cfg = get_qnn_qdq_config(str(p), _Reader(driver, seqs, g), activation_type=act,
                                         weight_type=QuantType.QInt8, per_channel=True, nodes_to_exclude=names or None)
                quantize(str(p), str(final / p.name), cfg)
            zeros = [quantized_zeros_kept_qdq(fp32[g], final / f"{g}.onnx") for g in fp32]
            meta["quantized_zeros"] = {"checked_weights": sum(z["checked_weights"] for z in zeros),
                                       "zeros_broken_in": sum((z["zeros_broken_in"] for z in zeros), []),
                                       "ok": all(z["ok"] or not z["checked_weights"] for z in zeros)}
            meta["calibration_sequences"] = len(seqs)
            meta["float_nodes"] = excluded
            if meta["quantized_zeros"]["zeros_broken_in"]:
                raise ExportError(f"static {precision}: quantization turned pruned zeros non-zero in "
                                  f"{meta['quantized_zeros']['zeros_broken_in'][:3]}")
        if op_table:
            meta["op_coverage"] = {g: check_ops(final / f"{g}.onnx", op_table) for g in ("prefill", "decode")}
        for g in ("prefill", "decode"):
            m = onnx.load(str(final / f"{g}.onnx"))
            for k, v in meta.items():
                if isinstance(v, (str, int, float, list)):
                    m.metadata_props.append(onnx.StringStringEntryProto(key=f"cap_edge.{k}", value=str(v)))
            onnx.save_model(m, str(final / f"{g}.onnx"))
        placed = move_into([final / "prefill.onnx", final / "decode.onnx"], out_dir / sub)
    return Artifact("onnx-static", precision, str(placed[0]), [str(p) for p in placed], metadata=meta)
