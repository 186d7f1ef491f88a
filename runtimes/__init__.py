"""Runtimes behind one small interface (``base.Runtime``), by name. ``exporters.formats`` says
which runtime runs each format. The classes import their runtime package when instantiated, so a
missing optional runtime fails with its own clear error when used, never silently."""

from __future__ import annotations

from cap_edge.errors import RuntimeLoadError

from .genai import GenaiLM
from .llamacpp import LlamaCppLM
from .onnx_static import StaticKVLM
from .onnxruntime import OnnxCausalLM

RUNTIMES = {
    "onnxruntime": OnnxCausalLM,  # optimum-layout ONNX with a KV cache (runtimes/onnxruntime.py)
    "onnxruntime-static": StaticKVLM,  # fixed-shape prefill/decode driver (runtimes/onnx_static.py)
    "llama.cpp": LlamaCppLM,  # GGUF through llama-cpp-python (runtimes/llamacpp.py)
    "onnxruntime-genai": GenaiLM,  # genai folders, the apps' LLM runtime (runtimes/genai.py; extra: genai)
}


def load_runtime(name: str, path, **kwargs):
    """An instance of runtime ``name`` on the artifact at ``path``; failures are RuntimeLoadError."""
    try:
        cls = RUNTIMES[name]
    except KeyError:
        raise RuntimeLoadError(f"unknown runtime {name!r}; known: {', '.join(RUNTIMES)}") from None
    try:
        return cls(path, **kwargs)
    except RuntimeLoadError:
        raise
    except Exception as e:  # the runtimes raise many types (ORT's Fail, llama.cpp's ValueError, ...)
        raise RuntimeLoadError(f"{name} could not load {path}: {e}") from e
