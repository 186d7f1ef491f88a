"""Fidelity to the dense model: the measures a user notices before any benchmark score.

* **KL divergence** KL(dense || candidate) of the next-token distributions on held-out text (an
  original passage in ``data/heldout.txt``, never calibration or task data) and on fixed chat
  prompts followed by the dense model's own greedy answer: mean, 99th percentile, and top-1
  agreement with the dense model (how llama.cpp judges a quantized model against its base).
* **Perplexity** of the same held-out text.
* **Generation retention**: of held-out free-answer questions the dense model answers correctly by
  greedy generation, the share the candidate still answers correctly.
* **Sample outputs** of the fixed chat prompts, for the report.

``Reference`` computes the dense model's side once; ``measure`` scores any candidate through the
two primitives every backend has: ``logits(ids)`` and ``greedy(prompts, n)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .evaluate import _norm, extract_answer, wilson_ci
from .prompts import chat_prompt, plain_prompt, uses_chat_template
from .tasks.base import Problem

HELDOUT = Path(__file__).resolve().parent / "data" / "heldout.txt"
CHAT_PROMPTS = (
    "What is the capital of France?",
    "Write one sentence about the sea.",
    "What is 7 plus 5?",
    "Name three colours.",
    "Translate 'good morning' into French.",
    "Give me one tip for sleeping better.",
)
SAMPLE_TOKENS = 40  # greedy tokens per chat prompt (samples in the report, and KL positions)
ANSWER_TOKENS = 16  # greedy tokens for the free-answer questions


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def text_chunks(tokenizer, max_tokens: int = 256, total: int = 768) -> list[list[int]]:
    """The held-out text as up to ``total`` tokens in chunks of ``max_tokens`` (each scored alone)."""
    ids = tokenizer(HELDOUT.read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"][:total]
    return [ids[i:i + max_tokens] for i in range(0, len(ids), max_tokens) if len(ids[i:i + max_tokens]) > 1]


def chat_ids(tokenizer, question: str) -> list[int]:
    text = chat_prompt(tokenizer, question) if uses_chat_template(tokenizer) else plain_prompt(question)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@dataclass
class Reference:
    """The dense model's side of every measure, computed once per model and problem set."""

    text: list[list[int]]  # held-out text chunks
    chats: list[list[int]]  # chat prompt + the dense model's greedy answer
    chat_prompt_lens: list[int]
    logprobs: list[np.ndarray]  # dense log-probs (T, V) of every text chunk, then every chat sequence
    samples: list[str]  # the dense model's answers to the chat prompts
    questions: list[Problem]  # free-answer questions the dense model answers correctly by generation
    asked: int  # questions tried
    ppl: float

    def as_dict(self) -> dict:
        return {"text_tokens": sum(len(t) for t in self.text), "chat_tokens": sum(len(c) for c in self.chats),
                "dense_ppl": self.ppl, "questions_asked": self.asked, "dense_correct": len(self.questions),
                "samples": dict(zip(CHAT_PROMPTS, self.samples))}


def _perplexity(logprobs: list[np.ndarray], seqs: list[list[int]]) -> float:
    nll = [-lp[np.arange(len(s) - 1), s[1:]] for lp, s in zip(logprobs, seqs)]
    return math.exp(float(np.concatenate(nll).mean()))


def answers(greedy: Callable, tokenizer, problems: Sequence[Problem], max_new_tokens: int = ANSWER_TOKENS) -> list[bool]:
    """Greedy free-answer correctness of each problem (exact match after extraction)."""
    prompts = [chat_ids(tokenizer, p.question) for p in problems]
    outs = greedy(prompts, max_new_tokens)
    return [_norm(extract_answer(tokenizer.decode(o, skip_special_tokens=True), p)) == _norm(p.answer)
            for p, o in zip(problems, outs)]


def reference(logits: Callable, greedy: Callable, tokenizer, questions: Sequence[Problem]) -> Reference:
    """``logits(ids) -> (T, V)`` and ``greedy(prompts, n) -> ids`` of the dense model."""
    text = text_chunks(tokenizer)
    prompts = [chat_ids(tokenizer, q) for q in CHAT_PROMPTS]
    gens = greedy(prompts, SAMPLE_TOKENS)
    chats = [p + g for p, g in zip(prompts, gens)]
    logprobs = [_log_softmax(logits(s)).astype(np.float32) for s in text + chats]
    ok = answers(greedy, tokenizer, questions)
    return Reference(text, chats, [len(p) for p in prompts], logprobs,
                     [tokenizer.decode(g, skip_special_tokens=True) for g in gens],
                     [q for q, c in zip(questions, ok) if c], len(questions), _perplexity(logprobs[: len(text)], text))


def measure(logits: Callable, greedy: Callable | None, tokenizer, ref: Reference) -> dict:
    """KL to dense (mean, p99, top-1 agreement), perplexity, generation retention, sample outputs."""
    kls, agree, lps = [], [], []
    seqs = ref.text + ref.chats
    for s, dense in zip(seqs, ref.logprobs):
        got = _log_softmax(logits(s)[:, : dense.shape[1]])
        lps.append(got)
        p = np.exp(dense.astype(np.float64))
        kls.append((p * (dense - got)).sum(-1))  # (T,) KL(dense || candidate) per position
        agree.append(dense.argmax(-1) == got.argmax(-1))
    kl = np.concatenate(kls)
    out = {"kl_mean": float(kl.mean()), "kl_p99": float(np.quantile(kl, 0.99)), "kl_positions": int(kl.size),
           "top1_agreement": float(np.concatenate(agree).mean()),
           "ppl": _perplexity(lps[: len(ref.text)], ref.text), "dense_ppl": ref.ppl}
    if greedy is not None:
        kept = answers(greedy, tokenizer, ref.questions) if ref.questions else []
        n, k = len(kept), sum(kept)
        lo, hi = wilson_ci(k, n) if n else (float("nan"), float("nan"))
        out["retention"] = {"share": k / n if n else float("nan"), "kept": k, "dense_correct": n, "ci95": [lo, hi]}
        gens = greedy([c[:n_p] for c, n_p in zip(ref.chats, ref.chat_prompt_lens)], SAMPLE_TOKENS)
        out["samples"] = {q: tokenizer.decode(g, skip_special_tokens=True) for q, g in zip(CHAT_PROMPTS, gens)}
    return out


def torch_primitives(model, tokenizer):
    """``logits`` and ``greedy`` callables over a PyTorch model (the same contract as the runtimes)."""
    import torch

    from .backend import TorchBackend

    dev = next(model.parameters()).device
    backend = TorchBackend(model, tokenizer, progress=False)

    @torch.inference_mode()
    def logits(ids):
        return model(torch.tensor([list(ids)], device=dev)).logits[0].float().cpu().numpy()

    return logits, backend.greedy


def runtime_primitives(runtime):
    """The same callables over a runtime (runtimes.base.Runtime)."""
    return runtime.logits, runtime.greedy
