"""Orchestration of structured pruning: scores -> plan -> surgery -> report. The planning maths is
in ``cap_edge.structure``."""

from __future__ import annotations

import time

import torch

from ..arch import head_geometry
from ..config import PruneConfig
from ..errors import ConfigError
from ..scoring import ScoringEngine, score_matrix
from ..structure import apply_structure, is_structured, magnitude_unit_scores, plan_structure


def _matrix(result: dict | None, what: str, shape: tuple[int, int]) -> torch.Tensor:
    if result is None:
        raise ConfigError(f"structured cap pruning needs CAP {what} scores")
    if not result.get("complete"):
        raise ConfigError(f"CAP {what} scores are incomplete; finish scoring first")
    m = score_matrix(result)
    if tuple(m.shape) != shape:
        raise ConfigError(f"CAP {what} scores are for {tuple(m.shape)}; the model has {shape}")
    return m


def _part(budget, step: int, steps: int):
    """The cumulative budget after ``step`` of ``steps`` (an int, or a per-kind dict)."""
    if isinstance(budget, dict):
        return {k: int(round(v * step / steps)) for k, v in budget.items()}
    return int(round(budget * step / steps))


def _masks(layers, num_heads: int, groups: int, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """0/1 masks (L, H) of kept heads and (L, groups) of kept channel groups."""
    h = torch.zeros(len(layers), num_heads)
    c = torch.zeros(len(layers), groups)
    for l, st in enumerate(layers):
        h[l, list(st.heads)] = 1
        c[l, st.channel_groups(group)] = 1
    return h, c


def _kind_sizes(model) -> dict:
    """Parameters in attention and in MLP sub-blocks."""
    out = {"attn": 0, "mlp": 0}
    for n, p in model.named_parameters():
        if ".self_attn." in n:
            out["attn"] += p.numel()
        elif ".mlp." in n:
            out["mlp"] += p.numel()
    return out


@torch.no_grad()
def prune_structured(model, cfg: PruneConfig, head_scores: dict | None = None, channel_scores: dict | None = None,
                     split: dict | None = None, batch=None) -> dict:
    """Remove ``cfg.sparsity`` of all parameters as whole heads and MLP channel groups.

    ``split`` = {"attn": n, "mlp": n} fixes how many parameters each kind gives up (used to compare
    selection rules at an identical allocation); by default one budget is shared by score per param.
    """
    if is_structured(model.config):
        raise ConfigError("the model is already structurally pruned; prune the original model instead")
    geom = head_geometry(model.config)
    hidden = model.config.hidden_size
    width = model.config.intermediate_size
    if width % cfg.channel_group:
        raise ConfigError(f"MLP width {width} is not a multiple of channel_group {cfg.channel_group}")
    total = sum(p.numel() for p in model.parameters())
    t0 = time.perf_counter()
    if cfg.method == "cap":
        hs = _matrix(head_scores, "head", (geom.num_layers, geom.num_heads))
        cs = _matrix(channel_scores, "MLP channel", (geom.num_layers, width // cfg.channel_group))
    else:
        hs, cs = magnitude_unit_scores(model, cfg.channel_group)
    before = _kind_sizes(model)
    budget = split if split is not None else int(round(cfg.sparsity * total))
    if split is None and cfg.method == "magnitude":
        # weight norms of heads and of channel groups are on unrelated scales, so one shared budget
        # would empty one kind first: split it in proportion to each kind's parameters instead
        budget = {k: int(round(budget * v / (before["attn"] + before["mlp"]))) for k, v in before.items()}
    plan = dict(num_kv=geom.num_kv_heads, hidden=hidden, head_dim=geom.head_dim, group=cfg.channel_group,
                min_heads=cfg.min_heads, scope=cfg.scope)
    steps = cfg.steps if cfg.method == "cap" else 1  # re-estimation uses CAP's attribution
    layers = plan_structure(hs, cs, remove_params=_part(budget, 1, steps), **plan)
    for step in range(2, steps + 1):
        # scores of single units do not add up once many are gone: re-estimate the survivors on the
        # model as pruned so far (first-order, one forward + backward per kind), then extend the plan
        if batch is None:
            raise ConfigError("iterative structured pruning (steps > 1) needs the calibration batch")
        hmask, cmask = _masks(layers, geom.num_heads, width // cfg.channel_group, cfg.channel_group)
        eng = ScoringEngine(model, batch, 3, channel_group=cfg.channel_group)
        fixed = {"heads": hmask, "channels": cmask}
        hs = eng.attribution_effects("heads", fixed).median(dim=-1).values.float()
        cs = eng.attribution_effects("channels", fixed).median(dim=-1).values.float()
        hs[hmask == 0], cs[cmask == 0] = -1e6, -1e6  # gone stays gone
        layers = plan_structure(hs, cs, remove_params=_part(budget, step, steps), **plan)
    sizes = apply_structure(model, layers, allow_empty=cfg.min_heads == 0)
    after = _kind_sizes(model)
    left = sum(p.numel() for p in model.parameters())
    return {"method": cfg.method, "pattern": "structured", "scope": cfg.scope, "target_sparsity": cfg.sparsity,
            "achieved_sparsity": 1 - left / total, "params_before": total, "params_after": left,
            "prunable_params": before["attn"] + before["mlp"],
            "removed": {k: before[k] - after[k] for k in before}, "seconds": time.perf_counter() - t0,
            "sizes": sizes, "kept": [{"heads": list(s.heads), "kv_heads": list(s.kv_heads),
                                      "channel_groups": s.channel_groups(cfg.channel_group)} for s in layers],
            "never_pruned": "embeddings, norms and the LM head"}
