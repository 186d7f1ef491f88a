"""The one interface every runtime implements, and measurement helpers shared by them."""

from __future__ import annotations

import time
from typing import Protocol, Sequence

import numpy as np

Request = tuple[list[int], list[int]]


class Runtime(Protocol):
    name: str
    label: str  # "host-measured" here; a runtime on the target device would say so

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """(T, V) float32 logits for one sequence, no cache."""

    def loglik(self, requests: Sequence[Request]) -> list[float]:
        """Sum log p(continuation | context) per request (the evaluate.LMBackend contract)."""

    def greedy(self, prompts: Sequence[list[int]], max_new_tokens: int) -> list[list[int]]:
        """Greedy continuation ids per prompt, with the runtime's KV cache, stopping at EOS."""

    def timed_generate(self, prompt: Sequence[int], n_new: int) -> tuple[float, list[float]]:
        """(seconds to the first new token, seconds of each further decode step), EOS ignored."""


class KVCacheLM:
    """loglik / greedy / timed generation written once over two runtime primitives:
    ``_start(ids) -> (logits (T, V), state)`` runs a prompt from an empty cache, and
    ``_extend(ids, state) -> (logits, state)`` continues from a cached prefix."""

    eos: int | None = None

    def _start(self, ids):  # pragma: no cover - interface
        raise NotImplementedError

    def _extend(self, ids, state):  # pragma: no cover - interface
        raise NotImplementedError

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        return self._start(list(ids))[0]

    def loglik(self, requests: Sequence[Request]) -> list[float]:
        from collections import defaultdict

        groups = defaultdict(list)
        for i, (ctx, _) in enumerate(requests):
            groups[tuple(ctx)].append(i)
        out = [0.0] * len(requests)
        for ctx, members in groups.items():  # the context runs once per problem
            logits, state = self._start(list(ctx))
            first = log_softmax(logits[-1])
            for i in members:
                cont = requests[i][1]
                total = first[cont[0]]
                if len(cont) > 1:
                    lp = log_softmax(self._extend(cont[:-1], state)[0])
                    total += sum(lp[j, t] for j, t in enumerate(cont[1:]))
                out[i] = float(total)
        return out

    def greedy(self, prompts: Sequence[list[int]], max_new_tokens: int) -> list[list[int]]:
        res = []
        for p in prompts:
            logits, state = self._start(list(p))
            toks = []
            for _ in range(max_new_tokens):
                t = int(np.argmax(logits[-1]))
                if self.eos is not None and t == self.eos:
                    break
                toks.append(t)
                logits, state = self._extend([t], state)
            res.append(toks)
        return res

    def timed_generate(self, prompt: Sequence[int], n_new: int):
        t0 = time.perf_counter()
        logits, state = self._start(list(prompt))
        t = int(np.argmax(logits[-1]))
        ttft = time.perf_counter() - t0
        steps = []
        for _ in range(n_new - 1):
            s = time.perf_counter()
            logits, state = self._extend([t], state)
            t = int(np.argmax(logits[-1]))
            steps.append(time.perf_counter() - s)
        return ttft, steps


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def latency_summary(rt: Runtime, prompt_tokens: int, gen_tokens: int, runs: int = 3, warmup: int = 1,
                    vocab: int = 1000) -> dict:
    """Time to first token for a P-token prompt, prefill tokens/s and decode tokens/s: median of
    ``runs`` after ``warmup``, with min and max."""
    rng = np.random.default_rng(0)
    prompt = rng.integers(10, vocab, size=prompt_tokens).tolist()
    ttft, decode = [], []
    for i in range(warmup + runs):
        t_first, steps = rt.timed_generate(prompt, gen_tokens)
        if i >= warmup:
            ttft.append(t_first)
            decode.append(len(steps) / sum(steps) if steps else float("nan"))

    def stat(v):
        return {"median": float(np.median(v)), "min": float(np.min(v)), "max": float(np.max(v))}

    return {"prompt_tokens": prompt_tokens, "gen_tokens": gen_tokens, "runs": runs,
            "ttft_s": stat(ttft), "prefill_tok_s": stat([prompt_tokens / t for t in ttft]),
            "decode_tok_s": stat(decode)}
