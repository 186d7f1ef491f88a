"""Pure mask maths: which weights survive, given importance scores. Masks are bool, True = keep."""

from __future__ import annotations

import torch

from ..errors import ConfigError, PruneError


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the ``n`` highest-scoring of every ``m`` consecutive input weights of each row.

    scores (rows, cols) with cols divisible by m -> bool mask (rows, cols) with exactly n True per group.
    """
    rows, cols = scores.shape
    if not 0 < n < m:
        raise ConfigError(f"N:M pattern: expected 0 < N < M, got {n}:{m}")
    if cols % m:
        raise ConfigError(f"N:M pattern {n}:{m}: expected input features divisible by {m}, got {cols}")
    groups = scores.reshape(rows, cols // m, m)  # (rows, groups, m)
    keep_idx = groups.topk(n, dim=-1).indices  # (rows, groups, n)
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, keep_idx, True)
    return mask.reshape(rows, cols)


def _check_sparsity(sparsity: float) -> None:
    if not 0 <= sparsity < 1:
        raise ConfigError(f"sparsity: expected a value in [0, 1), got {sparsity!r}")


def row_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Prune the lowest ``sparsity`` share of each row (Wanda's per-output comparison group)."""
    _check_sparsity(sparsity)
    rows, cols = scores.shape
    k = int(round(cols * sparsity))  # rounded, not floored: per-block sparsities then average to the target
    mask = torch.ones_like(scores, dtype=torch.bool)
    if k:
        idx = scores.topk(k, dim=1, largest=False).indices  # (rows, k)
        mask.scatter_(1, idx, False)
    return mask


def matrix_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Prune the lowest ``sparsity`` share of the whole matrix (layer-wise magnitude pruning)."""
    _check_sparsity(sparsity)
    k = int(round(scores.numel() * sparsity))
    mask = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
    if k:
        mask[scores.flatten().topk(k, largest=False).indices] = False
    return mask.view_as(scores)


def global_threshold(scores: list[torch.Tensor], sparsity: float, tol: float = 1e-4, iters: int = 200) -> float:
    """Threshold t such that the share of scores below t is within ``tol`` of ``sparsity``.

    Bisection on t over all matrices at once (no concatenation: memory stays per-matrix).
    """
    _check_sparsity(sparsity)
    total = sum(s.numel() for s in scores)
    lo = min(float(s.min()) for s in scores)
    hi = max(float(s.max()) for s in scores)
    if sparsity == 0:
        return float("-inf")

    def frac_below(t: float) -> float:
        return sum(int((s < t).sum()) for s in scores) / total

    hi = hi + abs(hi) * 1e-6 + 1e-30  # make frac_below(hi) == 1
    t = lo
    for _ in range(iters):
        t = (lo + hi) / 2
        f = frac_below(t)
        if abs(f - sparsity) <= tol:
            return t
        if f < sparsity:
            lo = t
        else:
            hi = t
    return t


def sparsity_of(weight: torch.Tensor) -> float:
    return float((weight == 0).sum()) / weight.numel()


SPARSITY_TOL = 0.01  # unstructured / N:M: |achieved - target| allowed (per-row rounding, ties at the threshold)


def check_achieved(cfg, target: float, achieved: float, overshoot: float = 0.0) -> None:
    """Refuse a result whose sparsity is not the one asked for (e.g. scores that zero whole layers).
    Structured pruning removes whole units, so it may overshoot by ``overshoot`` (its largest moves)."""
    lo, hi = (target - 1e-3, target + overshoot) if cfg.structured else (target - SPARSITY_TOL, target + SPARSITY_TOL)
    if not lo <= achieved <= hi:
        raise PruneError(f"{cfg.method} {cfg.pattern}: achieved sparsity {achieved:.4f}, target {target:.4f} "
                         f"(allowed {lo:.4f}..{hi:.4f}); refusing to write this model")
