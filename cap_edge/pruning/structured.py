"""Orchestration of structured pruning: scores -> plan -> surgery -> report. The planning maths is
in ``cap_edge.structure``."""

from __future__ import annotations

import time

import torch

from ..arch import head_geometry
from ..config import PruneConfig
from ..errors import ConfigError
from ..scoring import CalibBatch, Decoder, ScoringEngine, check_scores, score_matrix
from .masks import check_achieved
from ..structure import (LayerStructure, apply_structure, attn_params, is_structured, magnitude_unit_scores, plan_structure,
                         refit_columns)


def _matrix(result: dict | None, target: str, shape: tuple[int, int]) -> torch.Tensor:
    if result is None:
        raise ConfigError(f"structured cap pruning needs CAP {'head' if target == 'heads' else 'MLP channel'} scores")
    check_scores(result, f"CAP {target} scores", num_layers=shape[0], num_units=shape[1], target=target, require_complete=True)
    return score_matrix(result)


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


def _keep_masks(st: LayerStructure, num_heads: int, head_dim: int, width: int) -> dict[str, torch.Tensor]:
    """Kept input columns of o_proj (nh*hd,) and of down_proj (I,), as bool masks."""
    heads = torch.zeros(num_heads * head_dim, dtype=torch.bool)
    for h in st.heads:
        heads[h * head_dim:(h + 1) * head_dim] = True
    channels = torch.zeros(width, dtype=torch.bool)
    channels[list(st.channels)] = True
    return {"heads": heads, "channels": channels}


def refit_batch(tokenizer, calib_spec: str, cfg: PruneConfig, tokens_per_problem: int = 256, seed: int = 0,
                draw: int = 0) -> CalibBatch:
    """The calibration batch for the refit: ``cfg.refit_problems`` problems of ``calib_spec``. The
    refit solves for up to I (1536 here) inputs per linear, so it wants many more tokens than the
    32 problems that are enough to rank heads."""
    from ..config import BudgetConfig
    from ..scoring import build_calib_batch
    from ..tasks import calibration_problems

    problems = calibration_problems(calib_spec, cfg.refit_problems, seed, draw=draw)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return build_calib_batch(tokenizer, problems, 3, BudgetConfig(problems=len(problems), tokens_per_problem=tokens_per_problem),
                             pad_id=pad)


@torch.no_grad()
def refit_structure(model, layers: list[LayerStructure], batch: CalibBatch, damp: float = 1.0, chunk: int = 16,
                    progress: bool = False) -> dict:
    """Before the surgery: layer by layer, zero the input columns of o_proj / down_proj that the plan
    removes and least-squares refit the kept ones on the calibration activations (``refit_columns``).

    Sequential like SparseGPT: layer l's inputs come from layers < l already refitted, so the fit
    also absorbs the drift the earlier removals caused; o_proj is refitted before down_proj's inputs
    are collected for the same reason. Zeroing a head's o_proj columns is exactly removing the head,
    so ``apply_structure`` afterwards only slices. Returns per layer and kind the output error
    ||(W - W')x||^2 / ||Wx||^2 of zeroing alone and after the refit (on the calibration tokens)."""
    from tqdm.auto import tqdm

    dec = Decoder(model)
    geom, dev = dec.geom, dec.device
    width = dec.gated("channels", 0).weight.shape[1]
    ids = batch.input_ids.to(dev)  # (N, T), right-padded
    valid = torch.arange(ids.shape[1], device=dev)[None] < batch.lengths.to(dev)[:, None]  # (N, T)
    chunks = [(dec.embed(ids[i:i + chunk]), valid[i:i + chunk]) for i in range(0, ids.shape[0], chunk)]
    report = []
    for l, st in enumerate(tqdm(layers, desc="refit", disable=not progress)):
        errs = {}
        for target, keep in _keep_masks(st, geom.num_heads, geom.head_dim, width).items():
            lin = dec.gated(target, l)
            if keep.all():
                continue
            C = keep.numel()
            H = torch.zeros(C, C, dtype=torch.float64, device=dev)  # sum of x x^T over real tokens

            def accumulate(_mod, args, H=H):
                x = args[0][cur_valid]  # (n real tokens, C)
                H.addmm_(x.double().T, x.double())

            hook = lin.register_forward_pre_hook(accumulate)
            try:
                for h, cur_valid in chunks:
                    dec.run(h, l, l + 1)
            finally:
                hook.remove()
            W = lin.weight.detach()
            new = refit_columns(W, H, keep.to(dev), damp)
            zeroed = W.double() * keep.to(dev)[None]

            def rel(Wn):
                D = W.double() - Wn.double()  # (out, C)
                return float(((D @ H) * D).sum() / ((W.double() @ H) * W.double()).sum().clamp_min(1e-30))

            errs[target] = {"zeroed": rel(zeroed), "refit": rel(new)}
            lin.weight.copy_(new)
        report.append(errs)
        chunks = [(dec.run(h, l, l + 1), v) for h, v in chunks]
    return {"damp": damp, "tokens": int(valid.sum()), "layers": report}


@torch.no_grad()
def prune_structured(model, cfg: PruneConfig, head_scores: dict | None = None, channel_scores: dict | None = None,
                     split: dict | None = None, batch=None, progress: bool = False) -> dict:
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
        hs = _matrix(head_scores, "heads", (geom.num_layers, geom.num_heads))
        cs = _matrix(channel_scores, "channels", (geom.num_layers, width // cfg.channel_group))
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
    step_plans = [[list(s.heads) for s in layers]]
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
        step_plans.append([list(s.heads) for s in layers])
    refit = None
    if cfg.refit:
        if batch is None:
            raise ConfigError("refit after structured pruning needs the calibration batch (or refit=False)")
        refit = refit_structure(model, layers, batch, damp=cfg.refit_damp, progress=progress)
    sizes = apply_structure(model, layers, allow_empty=cfg.min_heads == 0)
    after = _kind_sizes(model)
    left = sum(p.numel() for p in model.parameters())
    # the greedy plan stops after the move that crosses the budget: at most one layer's whole
    # attention plus one channel group per kind budgeted
    largest = attn_params(geom.num_kv_heads, geom.group_size, hidden, geom.head_dim) + 3 * cfg.channel_group * hidden
    check_achieved(cfg, cfg.sparsity, 1 - left / total, overshoot=largest / total * (2 if isinstance(budget, dict) else 1))
    return {"method": cfg.method, "pattern": "structured", "scope": cfg.scope, "target_sparsity": cfg.sparsity,
            "achieved_sparsity": 1 - left / total, "params_before": total, "params_after": left,
            "prunable_params": before["attn"] + before["mlp"],
            "removed": {k: before[k] - after[k] for k in before}, "seconds": time.perf_counter() - t0,
            "sizes": sizes, "kept": [{"heads": list(s.heads), "kv_heads": list(s.kv_heads),
                                      "channel_groups": s.channel_groups(cfg.channel_group)} for s in layers],
            "refit": refit, "steps": steps, "step_heads": step_plans, "never_pruned": "embeddings, norms and the LM head"}
