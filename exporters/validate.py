"""Every export checked against PyTorch: logits on fixed prompts under a per-format tolerance,
next-token top-1 agreement, and greedy generation (KV cache) equal to PyTorch's for 32 tokens where
the precision is exact enough to demand it. A failure raises ``ValidationError`` naming the
artifact, metric, value and tolerance; the caller keeps the artifact and marks it invalid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cap_edge.errors import ValidationError

from .formats import DECISIVE_MARGIN, GREEDY_TOKENS, FormatSpec

# Fixed prompts (tokenized with the model's own tokenizer).
PROMPTS = [
    "The capital of France is",
    "Question: Anna has 3 apples and buys 4 more. How many apples does she have?\nAnswer:",
    "def fibonacci(n):",
]

def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


@torch.no_grad()
def _torch_logits(model, ids: list[int]) -> np.ndarray:
    dev = next(model.parameters()).device
    return model(torch.tensor([ids], device=dev)).logits[0].float().cpu().numpy()


@torch.no_grad()
def _torch_greedy(model, ids: list[int], n: int, eos: int | None) -> list[int]:
    dev = next(model.parameters()).device
    out = model.generate(torch.tensor([ids], device=dev), attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=dev),
                         max_new_tokens=n, do_sample=False, temperature=None, top_p=None, top_k=None,
                         pad_token_id=eos, eos_token_id=eos)[0, len(ids):].tolist()
    return out[: out.index(eos)] if eos in out else out


def rounded_reference(model, dtype=torch.float16):
    """A copy of ``model`` whose matrices are rounded through ``dtype`` (then computed in fp32): the
    weights a half-precision file actually holds (norms and other vectors stay fp32, as written)."""
    import copy

    ref = copy.deepcopy(model)
    with torch.no_grad():
        for p in ref.parameters():
            if p.dim() == 2:
                p.copy_(p.to(dtype).to(p.dtype))
    return ref


def validate(runtime, model, tokenizer, spec: FormatSpec, artifact: str | Path, raise_on_fail: bool = True) -> dict:
    """Compare ``runtime`` (loaded on the artifact) with the PyTorch ``model`` under ``spec``'s rule:
    logits, KL and top-1 against ``model``; greedy generation against ``model`` ("exact") or against
    PyTorch running the file's own fp16-rounded weights ("rounded", F16: greedy equality then tests
    the runtime and the export, while the rounding's cost is what the KL measures)."""
    metric, tol, min_top1 = spec.metric, spec.tolerance, spec.min_top1
    diffs, kls, agree, total, agree_d, total_d = [], [], 0, 0, 0, 0
    for p in PROMPTS:
        ids = tokenizer(p, add_special_tokens=False)["input_ids"]
        ref = _torch_logits(model, ids)  # (T, V)
        got = runtime.logits(ids)[:, : ref.shape[1]]
        diffs.append(float(np.abs(ref - got).max()))
        a, b = _log_softmax(ref), _log_softmax(got)
        kls += list((np.exp(a) * (a - b)).sum(-1))  # KL(torch || runtime) per position
        same = ref.argmax(-1) == got.argmax(-1)
        agree += int(same.sum())
        total += len(ids)
        top2 = np.sort(ref, axis=-1)[:, -2:]
        decisive = (top2[:, 1] - top2[:, 0]) >= DECISIVE_MARGIN
        agree_d += int(same[decisive].sum())
        total_d += int(decisive.sum())
    result = {"max_abs_logit_diff": max(diffs), "mean_kl": float(np.mean(kls)), "max_kl": float(np.max(kls)),
              "metric": metric, "tolerance": tol, "top1_agreement": agree / total,
              "top1_agreement_decisive": agree_d / max(1, total_d), "decisive_positions": total_d,
              "min_top1": min_top1, "prompts": len(PROMPTS), "greedy_rule": spec.greedy}
    if spec.greedy != "none":
        eos = tokenizer.eos_token_id
        ids = tokenizer(PROMPTS[1], add_special_tokens=False)["input_ids"]
        ref = _torch_greedy(rounded_reference(model) if spec.greedy == "rounded" else model, ids, GREEDY_TOKENS, eos)
        got = runtime.greedy([ids], GREEDY_TOKENS)[0]
        same = next((i for i, (a, b) in enumerate(zip(ref, got)) if a != b), min(len(ref), len(got)))
        result["greedy_tokens_equal"] = same
        result["greedy_equal"] = ref == got
    if hasattr(runtime, "tokenize"):  # a runtime with its own tokenizer must produce the same ids
        texts = PROMPTS + ["  spaces\tand\nnewlines", "café 日本語 1234567", "<|im_start|>user\nHi<|im_end|>"]
        mismatch = [t for t in texts if runtime.tokenize(t) != tokenizer(t, add_special_tokens=False)["input_ids"]]
        result["tokenizer_equal"] = not mismatch
        result["tokenizer_mismatch"] = mismatch[:3]
    failures = []
    if not result.get("tokenizer_equal", True):
        failures.append(("tokenizer ids equal to the Hugging Face tokenizer's (texts differing)", len(result["tokenizer_mismatch"]), 0))
    if result[metric] > tol:
        failures.append((metric, result[metric], tol))
    if result["top1_agreement_decisive"] < min_top1:
        failures.append(("top1_agreement on decisive positions (below minimum)", result["top1_agreement_decisive"], min_top1))
    if spec.greedy != "none" and not result["greedy_equal"]:
        failures.append((f"greedy tokens equal to PyTorch (of {GREEDY_TOKENS})", result["greedy_tokens_equal"], GREEDY_TOKENS))
    result["passed"] = not failures
    result["failures"] = [{"metric": n, "value": v, "tolerance": t} for n, v, t in failures]
    if failures and raise_on_fail:
        name, value, t = failures[0]
        raise ValidationError(str(artifact), name, value, t)
    return result
