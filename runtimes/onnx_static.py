"""The fixed-shape driver: chunked prefill, then one-token decode, over a fixed KV-cache buffer.

Graphs from ``exporters.onnx_static`` (``prefill.onnx``: ``chunk`` tokens; ``decode.onnx``: one
token). Inputs ``input_ids``/``position_ids`` (1, T), ``attention_mask`` (1, C+T): 1 for the valid
cache slots and the real new tokens; ``past_key_values.{i}.key/value`` (1, kv_i, C, hd). Outputs
``logits`` (1, T, V) and ``new.{i}.key/value`` (1, kv_i, T, hd), written by the driver into slots
[n, n+T) of its buffer. Slots at or past n are never read as history, so continuing twice from the
same state (as log-likelihood scoring does for each choice) is safe without copying the buffer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from .base import KVCacheLM
from .onnxruntime import make_session, provider_options


class StaticKVLM(KVCacheLM):
    name = "onnxruntime-static"
    profile_options = staticmethod(provider_options)

    def __init__(self, path: str | Path, providers: Sequence[str] = ("CPUExecutionProvider",),
                 provider_options: dict | None = None, eos_token_id: int | None = None, pad_token_id: int = 0,
                 label: str = "host-measured"):
        self.path = Path(path)
        decode = self.path.with_name(self.path.name.replace("prefill", "decode"))
        if decode == self.path or not decode.is_file():
            from cap_edge.errors import RuntimeLoadError

            raise RuntimeLoadError(f"expected the decode graph next to {self.path} (decode.onnx), found none")
        self.sessions = {"prefill": make_session(self.path, providers, provider_options),
                         "decode": make_session(decode, providers, provider_options)}
        self.providers = self.sessions["prefill"].get_providers()
        self.label = label
        self.eos = eos_token_id
        self.pad = pad_token_id
        ins = {i.name: i for i in self.sessions["prefill"].get_inputs()}
        self.chunk = int(ins["input_ids"].shape[1])
        self.context = int(ins["attention_mask"].shape[1]) - self.chunk
        self.max_length = self.context
        self.past_names = [n for n in ins if n.startswith("past_key_values.")]
        self.shapes = {n: tuple(int(d) for d in ins[n].shape) for n in self.past_names}  # (1, kv, C, hd)

    def new_cache(self) -> dict:
        return {n: np.zeros(s, dtype=np.float32) for n, s in self.shapes.items()}

    def _feed(self, graph: str, ids: Sequence[int], cache: dict, n: int) -> dict:
        T = self.chunk if graph == "prefill" else 1
        real = len(ids)
        mask = np.zeros((1, self.context + T), dtype=np.int64)
        mask[0, :n] = 1  # the filled cache slots
        mask[0, self.context: self.context + real] = 1  # the real new tokens (pads stay masked)
        feed = {"input_ids": np.full((1, T), self.pad, dtype=np.int64),
                "position_ids": (n + np.arange(T, dtype=np.int64))[None], "attention_mask": mask, **cache}
        feed["input_ids"][0, :real] = ids
        return feed

    def _step(self, graph: str, ids: Sequence[int], cache: dict, n: int) -> np.ndarray:
        if n + len(ids) > self.context:
            raise ValueError(f"sequence of {n + len(ids)} tokens exceeds the fixed context of {self.context}")
        sess = self.sessions[graph]
        outs = sess.run(None, self._feed(graph, ids, cache, n))
        names = [o.name for o in sess.get_outputs()]
        real = len(ids)
        for name, val in zip(names[1:], outs[1:]):  # new.{i}.key -> past_key_values.{i}.key
            cache[name.replace("new.", "past_key_values.", 1)][:, :, n: n + real] = val[:, :, :real]
        return outs[0][0, :real].astype(np.float32)  # (real, V)

    def _run(self, ids: Sequence[int], cache: dict, n: int) -> np.ndarray:
        ids = list(ids)
        if len(ids) == 1:
            return self._step("decode", ids, cache, n)
        out = []
        for i in range(0, len(ids), self.chunk):
            part = ids[i: i + self.chunk]
            out.append(self._step("prefill", part, cache, n + i))
        return np.concatenate(out)

    def _start(self, ids):
        cache = self.new_cache()
        return self._run(ids, cache, 0), (cache, len(ids))

    def _extend(self, ids, state):
        cache, n = state
        return self._run(ids, cache, n), (cache, n + len(ids))

    def feeds(self, head: Sequence[int], tail: Sequence[int]):
        """Yield the feeds (with ``_graph``) of prefilling ``head`` in chunks, then decoding ``tail``
        one token at a time, running each so later feeds see a real cache (calibration data)."""
        cache, n = self.new_cache(), 0
        head, tail = list(head), list(tail)
        for i in range(0, len(head), self.chunk):
            part = head[i: i + self.chunk]
            yield {"_graph": "prefill", **{k: v.copy() for k, v in self._feed("prefill", part, cache, n).items()}}
            self._step("prefill", part, cache, n)
            n += len(part)
        for t in tail:
            yield {"_graph": "decode", **{k: v.copy() for k, v in self._feed("decode", [t], cache, n).items()}}
            self._step("decode", [t], cache, n)
            n += 1
