"""Exporters, by format name (explicit registry). Each takes (model_dir, out_dir, precision,
metadata) and returns an ``Artifact``; validation against PyTorch is in ``validate``."""

from __future__ import annotations

from .bundle import Artifact, finalize, update_manifest
from .gguf import PRECISIONS as GGUF_PRECISIONS
from .gguf import export_gguf
from .onnx import PRECISIONS as ONNX_PRECISIONS
from .onnx import export_onnx
from .onnx_static import PRECISIONS as STATIC_PRECISIONS
from .onnx_static import export_static

# "onnx-static": fixed-shape prefill + decode graphs, statically quantized (QDQ) for NPU providers
EXPORTERS = {"onnx": (export_onnx, ONNX_PRECISIONS), "gguf": (export_gguf, GGUF_PRECISIONS),
             "onnx-static": (export_static, STATIC_PRECISIONS)}


def get_exporter(fmt: str, precision: str):
    from cap_edge.errors import ExportError

    if fmt not in EXPORTERS:
        raise ExportError(f"unknown format {fmt!r}; known: {', '.join(EXPORTERS)}")
    fn, precs = EXPORTERS[fmt]
    if precision not in precs:
        raise ExportError(f"{fmt} precision: expected one of {', '.join(precs)}, got {precision!r}")
    return fn


__all__ = ["Artifact", "EXPORTERS", "get_exporter", "finalize", "update_manifest", "export_onnx", "export_gguf", "export_static"]
