"""Pure weight-importance functions, one per method (no hooks, no loops over models)."""

from __future__ import annotations

import torch

from ..errors import ConfigError


def magnitude_score(weight: torch.Tensor) -> torch.Tensor:
    """|W|."""
    return weight.abs()


def wanda_score(weight: torch.Tensor, act_norm: torch.Tensor) -> torch.Tensor:
    """|W_ij| * ||X_j||_2: weight (out, in), act_norm (in,) over calibration tokens."""
    if act_norm.shape != (weight.shape[1],):
        raise ConfigError(f"wanda_score: expected act_norm of shape ({weight.shape[1]},), got {tuple(act_norm.shape)}")
    return weight.abs() * act_norm[None, :].to(weight.dtype)


def head_importance(scores: torch.Tensor) -> torch.Tensor:
    """CAP: head scores (L, H) rescaled linearly to importance I in [1, 10] (all equal -> 1)."""
    s = scores.double()
    lo, hi = s.min(), s.max()
    if hi - lo <= 0:
        return torch.ones_like(s)
    return 1 + 9 * (s - lo) / (hi - lo)


def kv_importance(layer_importance: torch.Tensor, num_kv_heads: int) -> torch.Tensor:
    """A K/V head takes the mean importance of the query heads that share it. (H,) -> (H_kv,)."""
    H = layer_importance.shape[0]
    if H % num_kv_heads:
        raise ConfigError(f"expected query heads ({H}) divisible by KV heads ({num_kv_heads})")
    return layer_importance.view(num_kv_heads, H // num_kv_heads).mean(dim=1)


def expand_heads(importance: torch.Tensor, head_dim: int) -> torch.Tensor:
    """(heads,) -> (heads*head_dim,): one value per row (q/k/v) or per input column (o_proj)."""
    return importance.repeat_interleave(head_dim)


def cap_score(weight: torch.Tensor, head_importance: torch.Tensor | float, axis: int | None = None,
              head_dim: int | None = None) -> torch.Tensor:
    """CAP weight importance S_ij = |W_ij| * I(h(ij)).

    ``axis=0``: rows belong to heads (q/k/v projections, I has one entry per head of that projection);
    ``axis=1``: input columns belong to heads (o_proj); ``axis=None``: one importance for the whole
    matrix (MLP weights take their layer's mean head importance).
    """
    w = weight.abs()
    imp = torch.as_tensor(head_importance, dtype=w.dtype, device=w.device)
    if axis is None:
        if imp.numel() != 1:
            raise ConfigError(f"cap_score: axis=None expects one importance value, got {imp.numel()}")
        return w * imp.reshape(())
    if head_dim is None:
        raise ConfigError("cap_score: head_dim is required with an axis")
    per = expand_heads(imp, head_dim)
    if per.numel() != w.shape[axis]:
        raise ConfigError(f"cap_score: expected {w.shape[axis]} = heads x head_dim along axis {axis}, got {per.numel()}")
    return w * (per[:, None] if axis == 0 else per[None, :])
