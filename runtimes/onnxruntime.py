"""ONNX Runtime over an optimum ``text-generation-with-past`` export (inputs input_ids,
attention_mask, position_ids, past_key_values.{i}.key/value; outputs logits, present.{i}.*)."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from .base import KVCacheLM

log = logging.getLogger(__name__)


def make_session(path: str | Path, providers: Sequence[str] = ("CPUExecutionProvider",),
                 provider_options: dict | None = None, threads: int | None = None):
    """An InferenceSession on the first available provider of ``providers``; falls back to the CPU
    provider with a warning that names what was missing."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    chosen, opts = [], []
    for p in providers:
        if p in available:
            chosen.append(p)
            opts.append((provider_options or {}).get(p, {}))
        else:
            warnings.warn(f"ONNX Runtime execution provider {p} is not available here "
                          f"(available: {', '.join(available)}); falling back to CPUExecutionProvider", RuntimeWarning,
                          stacklevel=2)
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
        opts.append({})
    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), sess_options=so, providers=chosen, provider_options=opts)


def provider_options(rt, eos_token_id: int | None) -> dict:
    """Loader kwargs from a device profile's runtime section (device_profiles.RuntimeSpec), or
    the defaults (CPU provider) without one."""
    if rt is None:
        return {"eos_token_id": eos_token_id}
    return {"providers": tuple(rt.onnx_providers), "provider_options": dict(rt.provider_options), "eos_token_id": eos_token_id}


class OnnxCausalLM(KVCacheLM):
    name = "onnxruntime"
    profile_options = staticmethod(provider_options)

    def __init__(self, path: str | Path, providers: Sequence[str] = ("CPUExecutionProvider",),
                 provider_options: dict | None = None, eos_token_id: int | None = None, label: str = "host-measured"):
        self.path = Path(path)
        self.session = make_session(self.path, providers, provider_options)
        self.label = label
        self.providers = self.session.get_providers()
        self.eos = eos_token_id
        ins = {i.name: i for i in self.session.get_inputs()}
        self.past_names = [n for n in ins if n.startswith("past_key_values.")]
        self.present_names = [o.name for o in self.session.get_outputs() if o.name.startswith("present.")]
        # [batch, n_kv, past, head_dim] per input: a structurally pruned model has per-layer K/V heads
        self.past_shapes = {n: (int(ins[n].shape[1]), int(ins[n].shape[3])) for n in self.past_names}
        self.kv_dtype = (np.float16 if self.past_names and "float16" in ins[self.past_names[0]].type else np.float32)
        self.has_position_ids = "position_ids" in ins

    def _empty_past(self):
        return {n: np.zeros((1, kv, 0, hd), dtype=self.kv_dtype) for n, (kv, hd) in self.past_shapes.items()}

    def _run(self, ids: Sequence[int], past: dict | None, past_len: int):
        T = len(ids)
        feed = {"input_ids": np.asarray([ids], dtype=np.int64),
                "attention_mask": np.ones((1, past_len + T), dtype=np.int64)}
        if self.has_position_ids:
            feed["position_ids"] = np.arange(past_len, past_len + T, dtype=np.int64)[None]
        feed.update(past if past is not None else self._empty_past())
        outs = self.session.run(None, feed)
        logits = outs[0][0].astype(np.float32)  # (T, V)
        present = {pn.replace("present.", "past_key_values."): o for pn, o in zip(self.present_names, outs[1:])}
        return logits, present

    def _start(self, ids):
        logits, present = self._run(ids, None, 0)
        return logits, (present, len(ids))

    def _extend(self, ids, state):
        past, n = state
        logits, present = self._run(list(ids), past, n)
        return logits, (present, n + len(ids))
