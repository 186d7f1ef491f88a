"""onnxruntime-genai on a genai folder (``exporters.genai``): the runtime Android/iOS apps embed.

``logits`` / ``loglik`` / ``greedy`` through ``og.Generator`` (its KV cache; ``rewind_to`` continues
from a cached prefix), and ``tokenize`` with genai's own tokenizer, so validation can check its
ids against the Hugging Face tokenizer's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from .base import KVCacheLM


class GenaiLM(KVCacheLM):
    name = "onnxruntime-genai"

    @staticmethod
    def profile_options(rt, eos_token_id: int | None = None) -> dict:
        """genai reads providers from genai_config.json; the profile's context caps generation."""
        return {} if rt is None else {"max_length": rt.context_length}

    def __init__(self, path: str | Path, max_length: int | None = None, label: str = "host-measured"):
        try:
            import onnxruntime_genai as og
        except ImportError as e:
            from cap_edge.errors import RuntimeLoadError

            raise RuntimeLoadError("the genai format needs onnxruntime-genai: pip install 'cap-edge[genai]'") from e
        path = Path(path)
        self.folder = path if path.is_dir() else path.parent
        self.og = og
        self.model = og.Model(str(self.folder))
        self.tokenizer = og.Tokenizer(self.model)
        import json

        cfg = json.loads((self.folder / "genai_config.json").read_text())["model"]
        self.max_length = min(cfg["context_length"], max_length or cfg["context_length"])
        self.eos = cfg["eos_token_id"]
        self.label = label
        self.path = path

    def tokenize(self, text: str) -> list[int]:
        return [int(t) for t in self.tokenizer.encode(text)]

    def _generator(self):
        params = self.og.GeneratorParams(self.model)
        params.set_search_options(max_length=self.max_length, do_sample=False)
        return self.og.Generator(self.model, params)

    def _start(self, ids):
        gen = self._generator()
        gen.append_tokens(np.asarray(list(ids), dtype=np.int32))
        return gen.get_output("logits")[0].astype(np.float32), (gen, len(ids))

    def _extend(self, ids: Sequence[int], state):
        gen, n = state
        gen.rewind_to(n)  # drop whatever followed the cached prefix
        gen.append_tokens(np.asarray(list(ids), dtype=np.int32))
        return gen.get_output("logits")[0].astype(np.float32), (gen, n + len(ids))
