"""llama.cpp through llama-cpp-python, on a GGUF artifact."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from .base import KVCacheLM


class LlamaCppLM(KVCacheLM):
    name = "llama.cpp"

    @staticmethod
    def profile_options(rt, eos_token_id: int | None = None) -> dict:
        """Loader kwargs from a device profile's runtime section (the GGUF names its own EOS)."""
        return {} if rt is None else {"n_gpu_layers": rt.llamacpp_gpu_layers, "n_ctx": rt.context_length}

    KV_TYPES = {"f16": 1, "f32": 0}  # GGML type ids

    def __init__(self, path: str | Path, n_ctx: int = 2048, n_threads: int | None = None, n_gpu_layers: int = 0,
                 label: str = "host-measured", kv_cache_type: str = "f16"):
        """``kv_cache_type``: llama.cpp's default f16 cache (what applications run), or f32 to compare
        an F32 file exactly with PyTorch (an f16 cache alone moves logits by ~0.05)."""
        from llama_cpp import Llama

        self.path = Path(path)
        self.label = label
        kv = self.KV_TYPES[kv_cache_type]
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
