"""Runtimes behind one small interface (``base.Runtime``): ONNX Runtime and llama.cpp.

Explicit registry: format name -> loader. Imports are lazy so a missing optional runtime fails
with its own clear ImportError when used, never silently.
"""

from __future__ import annotations


def load_runtime(fmt: str, path, **kwargs):
    if fmt == "onnx":
        from .onnxruntime import OnnxCausalLM

        return OnnxCausalLM(path, **kwargs)
    if fmt == "onnx-static":
        from .onnx_static import StaticKVLM

        return StaticKVLM(path, **kwargs)
    if fmt == "gguf":
        from .llamacpp import LlamaCppLM

        return LlamaCppLM(path, **kwargs)
    raise ValueError(f"no runtime for format {fmt!r}; known: {', '.join(RUNTIMES)}")


RUNTIMES = {"onnx": "onnxruntime (runtimes/onnxruntime.py)", "gguf": "llama.cpp (runtimes/llamacpp.py)",
            "onnx-static": "onnxruntime, fixed-shape prefill/decode driver (runtimes/onnx_static.py)"}
