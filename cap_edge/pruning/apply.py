"""Orchestration: walk the model through the architecture table, gather layer-input statistics
sequentially (each layer sees the outputs of the already-pruned layers before it), score, mask,
write zeros. The maths lives in ``scores``, ``masks`` and ``sparsegpt``."""

from __future__ import annotations

import logging
import time

import torch
from tqdm.auto import tqdm

from ..arch import arch_for, get_module, head_geometry, prunable_linears
from ..config import PruneConfig
from ..errors import ConfigError
from ..scoring import CalibBatch, Decoder, check_scores, score_matrix
from .allocation import allocate, dense_blocks, rank_normalise, saliency_allocate
from .calibration import InputStats, answer_saliency, rank_report, statistic_weights
from .masks import check_achieved, global_threshold, matrix_mask, nm_mask, row_mask
from .methods import get_method, needs_cap_scores, obs_settings
from .scores import cap_score, head_importance, kv_importance, magnitude_score, wanda_score
from .sparsegpt import refit_on_mask, sparsegpt_prune

log = logging.getLogger(__name__)


def _linears(layer, spec) -> dict[str, torch.nn.Linear]:
    return {path: get_module(layer, path) for path in prunable_linears(spec)}


def _cap_factor(path: str, spec, geom, I_layer: torch.Tensor):
    """(importance, axis) of one linear for CAP: q rows / o columns by query head, k/v rows by KV
    head (mean of the query heads sharing it), MLP by the layer's mean head importance."""
    if path == spec.q:
        return I_layer, 0
    if path in (spec.k, spec.v):
        return kv_importance(I_layer, geom.num_kv_heads), 0
    if path == spec.o:
        return I_layer, 1
    return I_layer.mean(), None


def _kind(path: str, spec) -> str:
    return "attn" if path in (spec.q, spec.k, spec.v, spec.o) else "mlp"


def unit_of(path: str, spec, geom, head_f: torch.Tensor, chan_f: torch.Tensor, group: int):
    """(factor per unit, axis, unit width) of one linear: q rows / o columns by query head, k/v rows by
    K/V head (mean of its query heads), gate/up rows and down columns by MLP channel group."""
    if path == spec.q:
        return head_f, 0, geom.head_dim
    if path in (spec.k, spec.v):
        return kv_importance(head_f, geom.num_kv_heads), 0, geom.head_dim
    if path == spec.o:
        return head_f, 1, geom.head_dim
    return chan_f, (1 if path == spec.down else 0), group


def block_sizes(model) -> torch.Tensor:
    """Prunable parameters of each block, attention of layers 0..L-1 then their MLPs: (2L,)."""
    spec = arch_for(model)
    layers = get_module(model, spec.layers)
    size = {k: float(sum(lin.weight.numel() for p, lin in _linears(layers[0], spec).items() if _kind(p, spec) == k))
            for k in ("attn", "mlp")}
    return torch.tensor([size["attn"]] * len(layers) + [size["mlp"]] * len(layers))


def block_importance(model, head_scores: dict, channel_scores: dict):
    """Causal importance of each block (a layer's attention, then each layer's MLP): Δ answer CE of
    its units per parameter. Returns (importance (2L,), sizes (2L,), head scores (L, H), channel
    scores (L, G))."""
    spec, geom = arch_for(model), head_geometry(model.config)
    layers = get_module(model, spec.layers)
    L = len(layers)
    hs = score_matrix(check_scores(head_scores, "head scores", num_layers=L, num_units=geom.num_heads, target="heads",
                                   require_complete=True))  # (L, H)
    G = channel_scores["num_units"]
    cs = score_matrix(check_scores(channel_scores, "channel scores", num_layers=L, num_units=G, target="channels",
                                   require_complete=True))  # (L, G)
    sizes = block_sizes(model)  # (2L,)
    imp = torch.cat([hs.sum(1), cs.sum(1)]) / sizes  # (2L,) Δ CE per parameter
    return imp, sizes, hs, cs


def _blocks(layers, spec) -> list[list[torch.nn.Linear]]:
    """The linears of each block: attention of layers 0..L-1, then their MLPs (the allocation's order)."""
    return [[lin for p, lin in _linears(layers[l], spec).items() if _kind(p, spec) == k]
            for k in ("attn", "mlp") for l in range(len(layers))]


def guided_plan(model, cfg: PruneConfig, head_scores: dict | None, channel_scores: dict | None,
                batch: CalibBatch | None = None) -> dict:
    """CAP-guided targets: sparsity per (layer, attention|MLP) block from the blocks' causal
    importance (``block_importance``, ``allocation.allocate``) or, with ``alloc_signal="fisher"``, from
    the answer loss's per-weight OBD saliency on ``batch`` (``saliency_allocate``), and per-unit factors
    in [1 - s, 1 + s] by rank of the unit's score within its layer. Without scores (allowed only where
    ``needs_cap_scores`` says they would change nothing) the allocation is uniform or Fisher's and
    there are no unit factors (None)."""
    spec = arch_for(model)
    layers = get_module(model, spec.layers)
    L = len(layers)
    g = cfg.guidance
    bound = 0.0 if cfg.nm else g["alloc_bound"]  # N:M fixes each group's share
    scored = head_scores is not None and channel_scores is not None
    if not scored and needs_cap_scores(cfg):
        raise ConfigError(f"method {cfg.method!r} under guidance {g} needs CAP head and MLP channel scores")
    imp, sizes, hs, cs = block_importance(model, head_scores, channel_scores) if scored else (None, block_sizes(model), None, None)
    guided = L if g["blocks"] == "attention" else 2 * L  # the blocks the guidance moves: attention first, then the MLPs
    alloc = torch.full((2 * L,), float(cfg.target_sparsity), dtype=torch.float64)  # (2L,) every block at the target ...
    if cfg.allocation_signal == "fisher" and bound > 0:  # ... but the guided ones (their weighted mean stays the target)
        if batch is None:
            raise ConfigError("alloc_signal=fisher needs the calibration batch (its answer-loss gradients)")
        alloc[:guided] = saliency_allocate(answer_saliency(model, batch, _blocks(layers, spec)[:guided]), cfg.target_sparsity,
                                           bound)
    elif scored:  # bound 0 without scores (needs_cap_scores): the uniform allocation, as allocate gives at bound 0
        alloc[:guided] = allocate(imp[:guided], sizes[:guided], cfg.target_sparsity, bound)
    s = g["unit_strength"]
    s_mlp = s if guided == 2 * L else 0.0  # MLP channels unweighted where only attention is guided
    width = get_module(layers[0], spec.down).in_features
    return {"attn": alloc[:L].tolist(), "mlp": alloc[L:].tolist(), "group": width // cs.shape[1] if scored else None,
            "importance": imp, "sizes": sizes,  # per block, for the dense-block choice (dense_plan)
            "head_f": [1 + s * rank_normalise(hs[l]) if scored else None for l in range(L)],
            "chan_f": [1 + s_mlp * rank_normalise(cs[l]) if scored else None for l in range(L)]}


def dense_plan(model, cfg: PruneConfig, plan: dict | None) -> set[tuple[str, int]]:
    """{(kind, layer)} kept dense beside the N:M pattern (``PruneConfig.nm_dense``); ``plan``: the
    guided method's ``guided_plan`` (its block importance), None for other methods."""
    if not cfg.nm_dense:
        return set()
    L = len(get_module(model, arch_for(model).layers))
    if cfg.nm_dense_by == "cap":
        if plan is None:
            raise ConfigError(f"nm_dense_by=cap chooses the dense blocks by CAP head and channel scores: a CAP-guided "
                              f"method (cap-wanda, cap-sparsegpt); got {cfg.method!r} (or use nm_dense_by=depth)")
        imp, sizes = plan["importance"], plan["sizes"]
    else:  # the earliest blocks first: a non-causal control with the same budget
        imp = torch.arange(L, 0, -1, dtype=torch.float64).repeat(2)  # (2L,): attention l and MLP l rank L - l
        sizes = block_sizes(model)
    keep = dense_blocks(imp, sizes, cfg.nm_dense)
    return {("attn" if i < L else "mlp", i % L) for i in keep.nonzero().flatten().tolist()}


def unit_factor(W: torch.Tensor, f: torch.Tensor, axis: int, width: int) -> torch.Tensor:
    """W's shape, each row (axis 0) or column (axis 1) scaled by its unit's factor f (units,)."""
    per = f.repeat_interleave(width).to(device=W.device, dtype=W.dtype)
    if per.numel() != W.shape[axis]:
        raise ConfigError(f"unit factors: expected {W.shape[axis]} = units x width along axis {axis}, got {per.numel()}")
    return W * (per[:, None] if axis == 0 else per[None, :])


@torch.no_grad()
def prune_model(model, cfg: PruneConfig, batch: CalibBatch | None = None, head_scores: dict | None = None,
                progress: bool = True, channel_scores: dict | None = None) -> dict:
    """Prune ``model`` in place. Returns a report: per-linear and overall achieved sparsity.
    ``pattern="structured"`` removes whole heads and MLP channel groups instead (``structured``)."""
    if cfg.structured:
        from .structured import prune_structured

        return prune_structured(model, cfg, head_scores, channel_scores, batch=batch, progress=progress)
    method = get_method(cfg.method)
    spec = arch_for(model)
    geom = head_geometry(model.config)
    layers = get_module(model, spec.layers)
    nm = cfg.nm
    target = cfg.target_sparsity
    if method.stats != "none" and batch is None:
        raise ConfigError(f"method {cfg.method!r} needs calibration data")
    I = plan = None
    t0 = time.perf_counter()  # the plan counts: the Fisher allocation's gradient pass is part of pruning
    scored = needs_cap_scores(cfg)  # cap-wanda's token weights alone (its default below 15%) read no CAP scores
    if scored and method.uses_heads and head_scores is None:
        raise ConfigError(f"method {cfg.method!r} needs CAP head scores")
    if scored and method.uses_channels and channel_scores is None:
        raise ConfigError(f"method {cfg.method!r} needs CAP MLP channel scores")
    if method.guided:
        plan = guided_plan(model, cfg, head_scores, channel_scores, batch)
    elif method.uses_heads:
        check_scores(head_scores, "head scores", num_layers=geom.num_layers, num_units=geom.num_heads, target="heads",
                     require_complete=True)
        I = head_importance(score_matrix(head_scores))  # (L, H) in [1, 10]
    dense = dense_plan(model, cfg, plan)  # (kind, layer) blocks left dense
    obs = obs_settings(cfg, method) if method.stats == "hessian" else None
    obs_dtype = getattr(torch, cfg.sparsegpt_dtype)  # the OBS solve's and the refit's precision

    def sparsity_of(path, l):
        return plan[_kind(path, spec)][l] if plan else target

    def score_of(path, W, l, stats):
        if cfg.method == "magnitude":
            return magnitude_score(W)
        if cfg.method == "cap":
            imp, axis = _cap_factor(path, spec, geom, I[l])
            return cap_score(W, imp, axis, geom.head_dim)
        s = wanda_score(W, stats.sq[path].sqrt())
        if plan is not None and plan["head_f"][l] is not None:
            f, axis, width = unit_of(path, spec, geom, plan["head_f"][l], plan["chan_f"][l], plan["group"])
            s = unit_factor(s, f, axis, width)
        return s

    def keep_mask(S, sparsity):
        if nm is not None:
            return nm_mask(S, *nm)
        return matrix_mask(S, sparsity) if method.group == "matrix" else row_mask(S, sparsity)

    if method.stats == "none":
        all_lin = [(l, p, lin) for l in range(len(layers)) for p, lin in _linears(layers[l], spec).items()]
        scores = [score_of(p, lin.weight.float(), l, None) for l, p, lin in all_lin]
        thr = global_threshold(scores, target) if (method.group == "global" and nm is None) else None
        for (l, p, lin), S in tqdm(list(zip(all_lin, scores)), desc=f"prune {cfg.method}", disable=not progress):
            if (_kind(p, spec), l) in dense:
                continue
            keep = (S >= thr) if thr is not None else keep_mask(S, target)
            lin.weight.mul_(keep.to(lin.weight.dtype))
    else:
        weights, calib_info = statistic_weights(model, batch, cfg.guidance["token_beta"] if method.guided else 0.0,
                                                cfg.dedup_prefix)
        uniform = None  # (N, T): where only attention is guided, MLP inputs weighted as the unguided method's
        if method.guided and cfg.guidance["blocks"] == "attention":
            uniform = statistic_weights(model, batch, 0.0, cfg.dedup_prefix)[0][0]  # beta 0: the same for every layer
            calib_info["beta_applies_to"] = "attention inputs (MLP inputs uniform)"
        calib_info["rank"] = []
        dec = Decoder(model)
        h = dec.embed(batch.input_ids.to(dec.device))  # (N, T, D): the "catcher" step, inputs to layer 0
        for l in tqdm(range(len(layers)), desc=f"prune {cfg.method} (sequential)", disable=not progress):
            lins = _linears(layers[l], spec)
            w, u = weights[l].to(dec.device), None if uniform is None else uniform.to(dec.device)
            stats = InputStats(lins, method.stats, {p: w if u is None or _kind(p, spec) == "attn" else u for p in lins})
            try:
                dec.run(h, l, l + 1)  # statistics of this layer's inputs, given pruned earlier layers
            finally:
                stats.close()
            if method.stats == "hessian":  # q/k/v share an input, as do gate/up
                calib_info["rank"].append({p.rsplit(".", 1)[-1]: rank_report(stats.H[p])
                                           for p in (spec.q, spec.o, spec.gate, spec.down)})
            for p, lin in lins.items():
                if (_kind(p, spec), l) in dense:
                    continue
                W = lin.weight.float()
                if method.stats == "hessian":
                    Wn, keep = sparsegpt_prune(W, stats.H[p], sparsity_of(p, l), nm, cfg.sparsegpt_blocksize,
                                               obs["damp"], obs_dtype)
                    if obs["refit_iters"]:  # SparseGPT froze each column once passed: re-solve on the final mask
                        Wn = refit_on_mask(W, Wn, stats.H[p], keep, obs["refit_iters"], obs["damp"], obs_dtype,
                                           obs["refit_tol"], getattr(torch, obs["refit_products"]))
                    lin.weight.copy_(Wn.to(lin.weight.dtype))
                else:
                    lin.weight.mul_(keep_mask(score_of(p, W, l, stats), sparsity_of(p, l)).to(lin.weight.dtype))
            h = dec.run(h, l, l + 1)  # outputs of the pruned layer feed the next
        deficient = [(l, k) for l, r in enumerate(calib_info["rank"]) for k, v in r.items() if not v["full_rank"]]
        if deficient:
            log.warning("calibration statistics are rank deficient in %d of %d inputs (e.g. layer %d %s: rank %d of %d); "
                        "use more calibration problems (stats_problems)", len(deficient), 4 * len(layers), deficient[0][0],
                        deficient[0][1], calib_info["rank"][deficient[0][0]][deficient[0][1]]["rank"],
                        calib_info["rank"][deficient[0][0]][deficient[0][1]]["dim"])
    per = {}
    zeros = total = kept_dense = 0
    for l in range(len(layers)):
        for p, lin in _linears(layers[l], spec).items():
            z = int((lin.weight == 0).sum())
            per[f"{spec.layers}.{l}.{p}"] = {"shape": list(lin.weight.shape), "sparsity": z / lin.weight.numel()}
            zeros += z
            total += lin.weight.numel()
            kept_dense += lin.weight.numel() if (_kind(p, spec), l) in dense else 0
    effective = target * (1 - kept_dense / total)  # N:M inside the pruned blocks, nothing in the dense ones
    check_achieved(cfg, effective, zeros / total)
    return {"method": cfg.method, "pattern": cfg.pattern, "target_sparsity": target, "effective_target": effective,
            "dense_blocks": [f"{k} {l}" for k, l in sorted(dense)], "dense_share": kept_dense / total,
            "achieved_sparsity": zeros / total, "prunable_params": total, "seconds": time.perf_counter() - t0,
            "layers": per, "allocation": {"attn": plan["attn"], "mlp": plan["mlp"]} if plan else None,
            "guidance": cfg.guidance if plan else None, "obs": obs,
            "calibration_statistics": calib_info if method.stats != "none" else None,
            "never_pruned": "embeddings, norms and the LM head (tied to the embeddings in SmolLM2)"}

