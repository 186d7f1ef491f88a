"""Reasoning metrics over any backend that can score continuations and generate greedily.

Backends: ``TorchBackend`` here; ONNX Runtime and llama.cpp backends live in ``runtimes/`` and
implement the same two methods, so accuracy is measured on the artifact a device will run.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Protocol, Sequence

import torch
import torch.nn.functional as F

from .prompts import encode_pair, prompt_text
from .tasks.base import Problem, require_nonempty

Request = tuple[list[int], list[int]]  # (context ids, continuation ids)


class LMBackend(Protocol):
    def loglik(self, requests: Sequence[Request]) -> list[float]:
        """Sum of log p(continuation | context) per request."""

    def greedy(self, prompts: Sequence[list[int]], max_new_tokens: int) -> list[list[int]]:
        """Greedy continuation ids per prompt (stopping at EOS)."""


# ---------------------------------------------------------------- statistics

def wilson_ci(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for a proportion (well-behaved for small n and extreme rates)."""
    if n == 0:
        return (0.0, 1.0)
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def mcnemar(a: Sequence[bool], b: Sequence[bool]) -> dict:
    """Paired comparison of two models on the same problems: exact two-sided McNemar test (a
    binomial test on the problems exactly one of them gets right). Far more sensitive than
    comparing two confidence intervals, because the problems both get right or wrong cancel."""
    if len(a) != len(b) or not len(a):
        raise ValueError(f"mcnemar: expected two equal, non-empty lists of outcomes, got {len(a)} and {len(b)}")
    a_only = sum(1 for x, y in zip(a, b) if x and not y)
    b_only = sum(1 for x, y in zip(a, b) if y and not x)
    n, k = a_only + b_only, min(a_only, b_only)
    p = min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n) if n else 1.0
    return {"n": len(a), "a_only": a_only, "b_only": b_only, "p_value": p}


@dataclass(frozen=True)
class Accuracy:
    n: int
    correct: int
    chance: float

    @property
    def acc(self) -> float:
        return self.correct / self.n if self.n else float("nan")

    @property
    def ci95(self) -> tuple[float, float]:
        return wilson_ci(self.correct, self.n)

    @property
    def above_chance(self) -> bool:
        return self.ci95[0] > self.chance

    def as_dict(self) -> dict:
        lo, hi = self.ci95
        return {"n": self.n, "correct": self.correct, "acc": self.acc, "ci95": [lo, hi],
                "chance": self.chance, "above_chance": self.above_chance}


# ---------------------------------------------------------------- metrics

def context_limit(backend) -> int | None:
    """The longest sequence the backend can score (the model's or the runtime's context), if known."""
    return getattr(backend, "max_length", None)


def check_fits(backend, problem: Problem, n_tokens: int) -> None:
    limit = context_limit(backend)
    if limit is not None and n_tokens > limit:
        from .errors import TaskError

        raise TaskError(f"problem {problem.id!r}: prompt and answer are {n_tokens} tokens, over the context of "
                        f"{limit}; shorten the question (nothing is truncated silently)")


def mc_predictions(backend: LMBackend, tokenizer, problems: Sequence[Problem], encode=encode_pair) -> list[dict]:
    """Per problem: log-likelihood of each choice; prediction by length-normalised log-likelihood
    (sum log p / bytes of the choice, lm-eval-harness ``acc_norm``) and unnormalised (``acc``).
    ``encode(tokenizer, problem, answer) -> (context ids, answer ids)`` formats each request."""
    problems = require_nonempty(list(problems), "evaluation")
    requests, index, gold_tokens = [], [], {}
    for pi, p in enumerate(problems):
        if p.choices is None:
            raise ValueError(f"problem {p.id!r} has no choices; use the generation metric")
        for c in p.choices:
            requests.append(encode(tokenizer, p, c))
            check_fits(backend, p, len(requests[-1][0]) + len(requests[-1][1]))
            index.append(pi)
            if c == p.answer:
                gold_tokens[pi] = len(requests[-1][1])
    ll = backend.loglik(requests)
    per = defaultdict(list)
    for pi, v in zip(index, ll):
        per[pi].append(v)
    out = []
    for pi, p in enumerate(problems):
        lls = per[pi]
        norm = [v / max(1, len(c.encode("utf-8"))) for v, c in zip(lls, p.choices)]
        pred_norm = max(range(len(lls)), key=lambda j: norm[j])
        pred_raw = max(range(len(lls)), key=lambda j: lls[j])
        out.append({"id": p.id, "family": p.family, "gold": p.gold, "pred": pred_norm,
                    "pred_raw": pred_raw, "loglik": lls, "gold_tokens": gold_tokens[pi]})
    return out


def answer_nll(backend: LMBackend, tokenizer, problems: Sequence[Problem]) -> list[tuple[float, int]]:
    """(sum of -log p over gold answer tokens, number of tokens) per problem, teacher-forced."""
    reqs = [encode_pair(tokenizer, p, p.answer) for p in problems]
    return [(-v, len(r[1])) for v, r in zip(backend.loglik(reqs), reqs)]


_NUM = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def extract_answer(text: str, problem: Problem) -> str:
    """Numbers: the last number in the output (GSM8K style). Choices: the first choice named."""
    if _NUM.fullmatch(problem.answer.replace(",", "")):
        nums = _NUM.findall(text)
        return nums[-1].replace(",", "").rstrip(".") if nums else ""
    if problem.choices:
        low = text.lower()
        hits = [(low.find(c.lower()), c) for c in problem.choices if c.lower() in low]
        if hits:
            return min(hits)[1]
    return text.strip()


def _norm(s: str) -> str:
    s = s.strip().lower().rstrip(".")
    try:
        return str(float(s.replace(",", "")))
    except ValueError:
        return s


def generation_predictions(backend: LMBackend, tokenizer, problems: Sequence[Problem], max_new_tokens: int = 32) -> list[dict]:
    problems = require_nonempty(list(problems), "evaluation")
    prompts = []
    for p in problems:
        ids = tokenizer(prompt_text(tokenizer, p), add_special_tokens=False)["input_ids"]
        check_fits(backend, p, len(ids) + max_new_tokens)
        prompts.append(ids)
    outs = backend.greedy(prompts, max_new_tokens)
    res = []
    for p, o in zip(problems, outs):
        text = tokenizer.decode(o, skip_special_tokens=True)
        pred = extract_answer(text, p)
        res.append({"id": p.id, "family": p.family, "output": text, "pred": pred, "correct": _norm(pred) == _norm(p.answer)})
    return res


def evaluate(backend: LMBackend, tokenizer, problems: Sequence[Problem], metric: str = "mc",
             max_new_tokens: int = 32, encode=encode_pair) -> dict:
    """Per-family and overall accuracy (n, chance, 95% CI) plus gold-answer cross-entropy."""
    problems = require_nonempty(list(problems), "evaluation")
    if metric not in ("mc", "gen"):
        raise ValueError(f"metric must be 'mc' or 'gen'; got {metric!r}")
    by_id = {p.id: p for p in problems}
    if metric == "mc":
        preds = mc_predictions(backend, tokenizer, problems, encode)
        hits = {r["id"]: r["pred"] == r["gold"] for r in preds}
        hits_raw = {r["id"]: r["pred_raw"] == r["gold"] for r in preds}
    else:
        preds = generation_predictions(backend, tokenizer, problems, max_new_tokens)
        hits = {r["id"]: r["correct"] for r in preds}
        hits_raw = None
    if metric == "mc":  # the gold choice's log-likelihood is the gold answer's: no second pass
        nll = {r["id"]: (-r["loglik"][r["gold"]], r["gold_tokens"]) for r in preds}
    else:
        nll = dict(zip([p.id for p in problems], answer_nll(backend, tokenizer, problems)))

    def summarise(ids: list[str]) -> dict:
        ps = [by_id[i] for i in ids]
        chance = (sum(1 / len(p.choices) for p in ps) / len(ps)) if metric == "mc" else 0.0
        acc = Accuracy(len(ids), sum(hits[i] for i in ids), chance).as_dict()
        if hits_raw is not None:
            acc["acc_unnormalised"] = sum(hits_raw[i] for i in ids) / len(ids)
        tot, cnt = sum(nll[i][0] for i in ids), sum(nll[i][1] for i in ids)
        acc["answer_ce"] = tot / cnt
        return acc

    families = sorted({p.family for p in problems})
    return {
        "metric": "acc_norm" if metric == "mc" else "exact_match",
        "families": {f: summarise([p.id for p in problems if p.family == f]) for f in families},
        "overall": summarise([p.id for p in problems]),
        "predictions": preds,
    }


@torch.inference_mode()
def perplexity(model, tokenizer, text: str, max_length: int = 1024, stride: int = 512) -> float:
    """Sliding-window perplexity of a text (each token scored once, with up to ``max_length`` context)."""
    ids = tokenizer(text, return_tensors="pt").input_ids.to(next(model.parameters()).device)
    if ids.shape[1] < 2:
        raise ValueError("text too short for perplexity: expected at least 2 tokens")
    nll, count, prev_end = 0.0, 0, 0
    for begin in range(0, ids.shape[1], stride):
        end = min(begin + max_length, ids.shape[1])
        trg = end - prev_end  # tokens not yet scored
        chunk = ids[:, begin:end]
        logits = model(chunk).logits[0, :-1].float()
        targets = chunk[0, 1:]
        losses = F.cross_entropy(logits, targets, reduction="none")[-trg:] if trg < chunk.shape[1] else F.cross_entropy(logits, targets, reduction="none")
        nll += losses.sum().item()
        count += losses.numel()
        prev_end = end
        if end == ids.shape[1]:
            break
    return math.exp(nll / count)
