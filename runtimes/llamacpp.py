"""llama.cpp through llama-cpp-python, on a GGUF artifact."""

from __future__ import annotations

import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np

from .base import Request, log_softmax


class LlamaCppLM:
    name = "llama.cpp"

    def __init__(self, path: str | Path, n_ctx: int = 2048, n_threads: int | None = None, n_gpu_layers: int = 0,
                 label: str = "host-measured"):
        from llama_cpp import Llama

        self.path = Path(path)
        self.label = label
        self.llm = Llama(model_path=str(self.path), n_ctx=n_ctx, logits_all=True, verbose=False,
                         n_threads=n_threads or os.cpu_count(), n_gpu_layers=n_gpu_layers, n_batch=512)
        self.eos = self.llm.token_eos()

    def _eval(self, ids: Sequence[int], keep: int = 0) -> np.ndarray:
        """Evaluate ``ids`` after the first ``keep`` cached tokens; (len(ids), V) logits."""
        self.llm.n_tokens = keep  # eval() drops KV entries past n_tokens
        self.llm.eval(list(ids))
        return np.array(self.llm.scores[keep: keep + len(ids)], dtype=np.float32)

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        return self._eval(ids, 0)

    def loglik(self, requests: Sequence[Request]) -> list[float]:
        groups = defaultdict(list)
        for i, (ctx, _) in enumerate(requests):
            groups[tuple(ctx)].append(i)
        out = [0.0] * len(requests)
        for ctx, members in groups.items():
            first = log_softmax(self._eval(ctx, 0)[-1])
            for i in members:
                cont = requests[i][1]
                total = first[cont[0]]
                if len(cont) > 1:
                    lp = log_softmax(self._eval(cont[:-1], len(ctx)))
                    total += sum(lp[j, t] for j, t in enumerate(cont[1:]))
                out[i] = float(total)
        return out

    def greedy(self, prompts: Sequence[list[int]], max_new_tokens: int) -> list[list[int]]:
        res = []
        for p in prompts:
            logits = self._eval(p, 0)[-1]
            n, toks = len(p), []
            for _ in range(max_new_tokens):
                t = int(np.argmax(logits))
                if t == self.eos:
                    break
                toks.append(t)
                logits = self._eval([t], n)[-1]
                n += 1
            res.append(toks)
        return res

    def timed_generate(self, prompt: Sequence[int], n_new: int):
        t0 = time.perf_counter()
        t = int(np.argmax(self._eval(prompt, 0)[-1]))
        ttft = time.perf_counter() - t0
        n, steps = len(prompt), []
        for _ in range(n_new - 1):
            s = time.perf_counter()
            t = int(np.argmax(self._eval([t], n)[-1]))
            n += 1
            steps.append(time.perf_counter() - s)
        return ttft, steps
