"""llama.cpp through llama-cpp-python, on a GGUF artifact."""

from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from .base import KVCacheLM

EXTRA_BUFFERS_ENV = "CAP_EDGE_LLAMACPP_EXTRA_BUFFERS"


@functools.lru_cache(maxsize=1)
def extra_buffers_default() -> bool:
    """Whether to load GGUFs with llama.cpp's extra buffer types (weight repacking, AMX).

    A llama.cpp compiled natively on an AMX CPU (Sapphire Rapids; pip's cached wheel of a default
    build is one) routes quantized matmuls through AMX tile kernels, and where the VM's kernel does
    not grant AMX tile state those fault (general protection in ldtilecfg, SIGSEGV in libggml-cpu)
    on the first decode. Such a build therefore loads without extra buffer types unless
    ``CAP_EDGE_LLAMACPP_EXTRA_BUFFERS=1`` says the host runs AMX; a build without AMX keeps them."""
    env = os.environ.get(EXTRA_BUFFERS_ENV, "").strip()
    if env in ("0", "1"):
        return env == "1"
    if env:
        raise ValueError(f"{EXTRA_BUFFERS_ENV}: expected 0 or 1, got {env!r}")
    import llama_cpp

    return "AMX_INT8 = 1" not in llama_cpp.llama_print_system_info().decode(errors="replace")


def build_info() -> dict | None:
    """The llama.cpp build GGUF figures come from: version, CPU features it was compiled with, and whether
    GGUFs load with extra buffer types here. None without llama-cpp-python."""
    try:
        import llama_cpp
    except ImportError:
        return None
    info = llama_cpp.llama_print_system_info().decode(errors="replace")  # "CPU : SSE3 = 1 | AVX2 = 1 | ..."
    features = [f.split("=")[0].replace("CPU :", "").strip() for f in info.split("|") if f.strip().endswith("= 1")]
    return {"version": llama_cpp.__version__, "features": features, "extra_buffers": extra_buffers_default()}


@contextlib.contextmanager
def model_params(use_extra_bufts: bool):
    """Have ``Llama()`` load with ``use_extra_bufts`` set: llama-cpp-python 0.3.36's constructor takes
    no such argument and builds its parameters from ``llama_model_default_params()``, so that one
    function is wrapped for the duration of the load."""
    import llama_cpp.llama_cpp as C

    default = C.llama_model_default_params

    def params():
        p = default()
        p.use_extra_bufts = use_extra_bufts
        return p

    C.llama_model_default_params = params
    try:
        yield
    finally:
        C.llama_model_default_params = default


class LlamaCppLM(KVCacheLM):
    name = "llama.cpp"

    @staticmethod
    def profile_options(rt, eos_token_id: int | None = None) -> dict:
        """Loader kwargs from a device profile's runtime section (the GGUF names its own EOS)."""
        return {} if rt is None else {"n_gpu_layers": rt.llamacpp_gpu_layers, "n_ctx": rt.context_length}

    KV_TYPES = {"f16": 1, "f32": 0}  # GGML type ids

    def __init__(self, path: str | Path, n_ctx: int = 2048, n_threads: int | None = None, n_gpu_layers: int = 0,
                 label: str = "host-measured", kv_cache_type: str = "f16", extra_buffers: bool | None = None):
        """``kv_cache_type``: llama.cpp's default f16 cache (what applications run), or f32 to compare
        an F32 file exactly with PyTorch (an f16 cache alone moves logits by ~0.05).
        ``extra_buffers``: None = ``extra_buffers_default()`` (off for an AMX build, see there)."""
        from llama_cpp import Llama

        self.path = Path(path)
        self.label = label
        kv = self.KV_TYPES[kv_cache_type]
        self.extra_buffers = extra_buffers_default() if extra_buffers is None else extra_buffers
        with model_params(self.extra_buffers):
            self.llm = Llama(model_path=str(self.path), n_ctx=n_ctx, logits_all=True, verbose=False,
                             n_threads=n_threads or os.cpu_count(), n_gpu_layers=n_gpu_layers, n_batch=512,
                             type_k=kv, type_v=kv)
        self.eos = self.llm.token_eos()
        self.max_length = n_ctx

    def _eval(self, ids: Sequence[int], keep: int = 0) -> np.ndarray:
        """Evaluate ``ids`` after the first ``keep`` cached tokens; (len(ids), V) logits."""
        self.llm.n_tokens = keep  # eval() drops KV entries past n_tokens
        self.llm.eval(list(ids))
        return np.array(self.llm.scores[keep: keep + len(ids)], dtype=np.float32)

    def _start(self, ids):
        return self._eval(ids, 0), len(ids)

    def _extend(self, ids, n_past):
        # the cache holds one sequence: continuing from n_past drops whatever followed it
        return self._eval(ids, n_past), n_past + len(ids)
