"""One ``FormatSpec`` per format x precision: everything else reads it.

Exporter, runtime, validation rule (metric, tolerance, minimum top-1 on decisive positions, greedy
rule), bytes per parameter (memory and roofline estimates), whether pruned zeros are checked in the
stored integers, the next lower precision of the same format (the dense baseline a pruned artifact
must beat), and what its bundle ships. A new format or precision is one row here plus its exporter.

Tolerances were set from measurements (docs/results.md, exports), never to make something pass:
exact float formats are held to the max |logit difference|; reduced precisions to the mean
KL(PyTorch || runtime) of next-token distributions plus a minimum top-1 agreement on positions
where PyTorch's choice leads its runner-up by >= ``DECISIVE_MARGIN`` nats.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from cap_edge.errors import ExportError

from .bundle import HF_SIDE_FILES
from .genai import export_genai
from .gguf import export_gguf
from .onnx import export_onnx
from .onnx_static import export_static

DECISIVE_MARGIN = 0.5
GREEDY_TOKENS = 32


@dataclass(frozen=True)
class FormatSpec:
    format: str
    precision: str
    exporter: Callable  # (model_dir, out_dir, precision, metadata, **options) -> Artifact
    runtime: str  # key of runtimes.RUNTIMES
    metric: str  # "max_abs_logit_diff" or "mean_kl"
    tolerance: float
    min_top1: float  # on decisive positions
    greedy: str  # "exact": 32 greedy tokens equal PyTorch's; "rounded": equal PyTorch on fp16-rounded weights; "none"
    bytes_per_param: float  # weights only (memory estimate, roofline)
    quantized: bool  # integer storage: pruned zeros are checked in the stored integers
    lower: str | None  # next lower precision of this format (dense baseline), None at the bottom
    side_files: tuple[str, ...] = ()  # files beside the model that the runtime needs and the bundle ships
    kv_cache_type: str | None = None  # llama.cpp cache type used for validation (f32: compare the file exactly)
    run: str = ""  # how an app runs it ({path}: the model file, {dir}: its folder), for report.md

    @property
    def name(self) -> str:
        return f"{self.format}:{self.precision}"


RUN = {
    "onnx": "ORTModelForCausalLM.from_pretrained('{dir}', file_name='{name}') (optimum), or onnxruntime with a KV loop",
    "gguf": "llama-cli -m {path} -cnv   (llama.cpp; the file holds tokenizer and chat template)",
    "onnx-static": "runtimes.onnx_static.StaticKVLM('{path}') drives prefill.onnx + decode.onnx (ORT QNN EP on the phone)",
    "genai": "onnxruntime_genai.Model('{dir}') in the app (Android/iOS: the same folder)",
}


def _onnx(p, metric, tol, top1, greedy, bpp, quant, lower):
    return FormatSpec("onnx", p, export_onnx, "onnxruntime", metric, tol, top1, greedy, bpp, quant, lower, HF_SIDE_FILES,
                      run=RUN["onnx"])


def _gguf(p, metric, tol, top1, greedy, bpp, quant, lower, kv=None):
    # the GGUF file holds its tokenizer, chat template and metadata: nothing beside it
    return FormatSpec("gguf", p, export_gguf, "llama.cpp", metric, tol, top1, greedy, bpp, quant, lower, (), kv, RUN["gguf"])


def _static(p, metric, tol, top1, greedy, bpp, quant, lower):
    return FormatSpec("onnx-static", p, export_static, "onnxruntime-static", metric, tol, top1, greedy, bpp, quant, lower,
                      HF_SIDE_FILES, run=RUN["onnx-static"])


def _genai(p, metric, tol, top1, greedy, bpp, quant, lower):
    # the folder holds genai_config.json, tokenizer and chat template beside model.onnx
    return FormatSpec("genai", p, export_genai, "onnxruntime-genai", metric, tol, top1, greedy, bpp, quant, lower,
                      run=RUN["genai"])


# Q8_0 = 34 bytes per 32 weights, Q4_0 = 18; MatMulNBits int8 / int4 (scales not counted but int4's fp16).
# QDQ stores int8 weights (float-kept nodes not counted).
FORMATS: dict[tuple[str, str], FormatSpec] = {(s.format, s.precision): s for s in (
    _onnx("fp32", "max_abs_logit_diff", 1e-3, 1.0, "exact", 4.0, False, "fp16"),
    _onnx("fp16", "mean_kl", 0.01, 0.95, "none", 2.0, False, "int8"),
    _onnx("int8", "mean_kl", 0.05, 0.9, "none", 1.0, True, "int4"),
    _onnx("int4", "mean_kl", 0.5, 0.6, "none", 0.5 + 2 / 32, True, None),
    _gguf("f32", "max_abs_logit_diff", 1e-3, 1.0, "exact", 4.0, False, "f16", kv="f32"),
    _gguf("f16", "mean_kl", 0.01, 0.95, "rounded", 2.0, False, "q8_0", kv="f32"),
    _gguf("q8_0", "mean_kl", 0.2, 0.85, "none", 34 / 32, True, "q4_0"),
    _gguf("q4_0", "mean_kl", 0.5, 0.6, "none", 18 / 32, True, None),
    _static("fp32", "max_abs_logit_diff", 1e-3, 1.0, "exact", 4.0, False, "qdq16"),
    _static("qdq16", "mean_kl", 0.5, 0.6, "none", 1.0, True, "qdq8"),
    _static("qdq8", "mean_kl", 1.0, 0.5, "none", 1.0, True, None),
    _genai("fp32", "max_abs_logit_diff", 1e-3, 1.0, "exact", 4.0, False, "int8"),
    _genai("int8", "mean_kl", 0.05, 0.9, "none", 1.0, True, "int4"),
    _genai("int4", "mean_kl", 0.5, 0.6, "none", 0.5 + 2 / 32, True, None),
)}


def format_names() -> list[str]:
    return sorted({f for f, _ in FORMATS})


def precisions(fmt: str) -> tuple[str, ...]:
    return tuple(p for f, p in FORMATS if f == fmt)


def get_spec(fmt: str, precision: str) -> FormatSpec:
    """The spec of ``fmt:precision``; an unknown one is an ExportError naming what exists."""
    if fmt not in format_names():
        raise ExportError(f"unknown format {fmt!r}; known: {', '.join(format_names())}")
    try:
        return FORMATS[(fmt, precision)]
    except KeyError:
        raise ExportError(f"{fmt} precision: expected one of {', '.join(precisions(fmt))}, got {precision!r}") from None


def parse_output(text: str) -> FormatSpec:
    """``"gguf:q8_0"`` -> its spec (profiles and the CLI name outputs this way)."""
    fmt, sep, prec = str(text).rpartition(":")
    if not sep or not fmt:
        raise ExportError(f"output: expected FORMAT:PRECISION (e.g. gguf:q8_0), got {text!r}")
    return get_spec(fmt, prec)
