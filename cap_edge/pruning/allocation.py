"""Pure maths of CAP-guided allocation and token weighting (no hooks, no models).

``allocate``: spread a global sparsity target over blocks (a layer's attention or MLP) by their
causal importance, each block within ``bound`` of the target, the parameter-weighted mean equal to
the target. ``rank_normalise`` maps scores to [-1, 1] by rank, so one outlier cannot decide it.

``saliency_allocate``: the same targets from per-weight saliencies (one global threshold, clipped).

``token_weights``: per-token weights of the calibration statistics (Wanda's ||X_j||, SparseGPT's
Hessian) from the answer-loss gradient at each position, mixed with uniform weights by ``beta``
(0 = plain Wanda / SparseGPT); positions every row shares (the chat template's prefix) count once.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError


def rank_normalise(scores: torch.Tensor) -> torch.Tensor:
    """(n,) -> (n,) in [-1, 1]: -1 for the lowest, +1 for the highest (ties share the mean rank)."""
    s = scores.double().flatten()
    n = s.numel()
    if n == 1:
        return torch.zeros(1, dtype=torch.float64)
    order = s.argsort()
    r = torch.empty(n, dtype=torch.float64)
    r[order] = torch.arange(n, dtype=torch.float64)
    for v in s.unique():  # average tied ranks
        m = s == v
        if m.sum() > 1:
            r[m] = r[m].mean()
    return (2 * r / (n - 1) - 1).view_as(scores)


def allocate(importance: torch.Tensor, sizes: torch.Tensor, target: float, bound: float,
             floor: float = 0.0, ceil: float = 0.95, tol: float = 1e-7) -> torch.Tensor:
    """Per-block sparsity: more important blocks keep more weights.

    importance (n,), sizes (n,) parameters per block. Returns s (n,) with every s_i in
    [target - bound, target + bound] ∩ [floor, ceil], non-increasing in importance, and
    sum(s * sizes) / sum(sizes) == target within ``tol``. s_i = clip(target - bound * z_i + c), z the
    rank-normalised importance, c found by bisection (the weighted mean is monotone in c).
    """
    if importance.shape != sizes.shape or importance.dim() != 1:
        raise ConfigError(f"allocation: expected importance and sizes of one shape (n,), got "
                          f"{tuple(importance.shape)} and {tuple(sizes.shape)}")
    lo, hi = _bounds(target, bound, floor, ceil)
    w = sizes.double() / sizes.double().sum()
    base = target - bound * rank_normalise(importance)
    c = _solve_mean(lambda c: float((w * (base + c).clamp(lo, hi)).sum()), target, -2.0 * (bound + 1), 2.0 * (bound + 1), tol)
    return (base + c).clamp(lo, hi)


def _bounds(target: float, bound: float, floor: float, ceil: float) -> tuple[float, float]:
    """[target - bound, target + bound] ∩ [floor, ceil], checked: every block's sparsity lies in it."""
    if not 0 <= target < 1:
        raise ConfigError(f"allocation target: expected a value in [0, 1), got {target!r}")
    if bound < 0:
        raise ConfigError(f"allocation bound: expected >= 0, got {bound!r}")
    lo, hi = max(floor, target - bound), min(ceil, target + bound)
    if not lo <= target <= hi:
        raise ConfigError(f"allocation: target {target} outside [{lo}, {hi}]")
    return lo, hi


def _solve_mean(mean_at, target: float, a: float, b: float, tol: float) -> float:
    """x in [a, b] with mean_at(x) == target within ``tol`` (bisection; mean_at non-decreasing in x)."""
    for _ in range(200):
        x = (a + b) / 2
        m = mean_at(x)
        if abs(m - target) <= tol:
            break
        a, b = (x, b) if m < target else (a, x)
    return x


def saliency_allocate(saliency: list[torch.Tensor], target: float, bound: float, floor: float = 0.0,
                      ceil: float = 0.95, tol: float = 1e-7) -> torch.Tensor:
    """Per-block sparsity from per-weight saliencies (e.g. the answer loss's OBD estimate 0.5 F w^2).

    saliency: one 1-D tensor per block, ascending. Every block prunes the weights below one global
    threshold lam (minimising the summed saliency of what is pruned, to first order), clipped to
    [target - bound, target + bound] ∩ [floor, ceil]; lam found by bisection so that the
    parameter-weighted mean equals the target, the remainder spread over the unclipped blocks.
    A block whose saliencies are all larger than another's never gets the higher sparsity."""
    if not saliency or any(s.dim() != 1 or not s.numel() for s in saliency):
        raise ConfigError("saliency allocation: expected one non-empty 1-D tensor per block")
    lo, hi = _bounds(target, bound, floor, ceil)
    sizes = torch.tensor([float(s.numel()) for s in saliency], dtype=torch.float64)  # (n,)
    w = sizes / sizes.sum()

    def at(lam: float) -> torch.Tensor:  # (n,) share of each block below lam, clipped
        below = torch.tensor([float(torch.searchsorted(s, lam)) for s in saliency], dtype=torch.float64)
        return (below / sizes).clamp(lo, hi)

    lam = _solve_mean(lambda x: float((w * at(x)).sum()), target, 0.0, max(float(s[-1]) for s in saliency) * 2 + 1e-30, tol)
    s = at(lam)
    free = (s > lo) & (s < hi)  # ties at lam leave a remainder; the blocks off their bounds absorb it
    if free.any():
        s[free] += (target - float((w * s).sum())) / float(w[free].sum())
    return s.clamp(lo, hi)


def token_weights(grad_norm: torch.Tensor, valid: torch.Tensor, beta: float, shared_prefix: int = 0) -> torch.Tensor:
    """Weights (N, T) of each calibration token in the layer-input statistics.

    grad_norm (N, T): ||dL_answer / dh_t|| at the layer input; valid (N, T) bool (not padding).
    w = (1 - beta) + beta * grad_norm / mean(grad_norm over valid tokens); 0 on padding. The first
    ``shared_prefix`` positions hold the same state in every row, so they count once (1/N each).
    beta = 0 and shared_prefix = 0 give 1 on every valid token: plain Wanda / SparseGPT."""
    if not 0 <= beta <= 1:
        raise ConfigError(f"token weighting beta: expected a value in [0, 1], got {beta!r}")
    if grad_norm.shape != valid.shape:
        raise ConfigError(f"token weights: expected grad_norm and valid of one shape, got {tuple(grad_norm.shape)} "
                          f"and {tuple(valid.shape)}")
    g = grad_norm.double() * valid
    mean = g.sum() / valid.sum().clamp_min(1)
    w = ((1 - beta) + (beta * g / mean if mean > 0 else 0.0)) * valid
    if shared_prefix:
        w[:, :shared_prefix] /= valid.shape[0]
    return w


def shared_prefix_length(input_ids: torch.Tensor, lengths: torch.Tensor) -> int:
    """Positions at which every row holds the same token (and hence the same hidden state)."""
    n = int(lengths.min()) - 1
    same = (input_ids[:, :n] == input_ids[:1, :n]).all(0)  # (n,)
    return int(same.long().cumprod(0).sum())


def dense_blocks(importance: torch.Tensor, sizes: torch.Tensor, budget: float) -> torch.Tensor:
    """Blocks kept dense beside an N:M pattern (TensorRT runs dense and 2:4 layers side by side).

    importance (n,) per parameter, sizes (n,) parameters per block. Returns (n,) bool: blocks taken
    in order of importance, each one that still fits while the dense blocks' parameters stay within
    ``budget`` (a share of all). The effective sparsity is (1 - dense share) x (1 - N/M)."""
    if isinstance(budget, bool) or not 0 <= budget < 1:
        raise ConfigError(f"dense budget: expected a share in [0, 1), got {budget!r}")
    if importance.shape != sizes.shape or importance.dim() != 1:
        raise ConfigError(f"dense blocks: expected importance and sizes of one shape (n,), got "
                          f"{tuple(importance.shape)} and {tuple(sizes.shape)}")
    room = budget * float(sizes.double().sum())
    dense = torch.zeros(importance.shape, dtype=torch.bool)
    for i in importance.double().argsort(descending=True, stable=True).tolist():
        if float(sizes[i]) <= room:
            dense[i] = True
            room -= float(sizes[i])
    return dense
