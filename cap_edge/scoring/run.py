"""Orchestration: calibration batch -> cache key -> scores (exact, naive, attribution or hybrid),
saved after every layer so an interrupted or time-limited run resumes where it stopped."""

from __future__ import annotations

import logging
import time
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from ..arch import head_geometry
from ..config import BudgetConfig, ScoreConfig
from ..errors import ConfigError, ScoringIncomplete
from ..io import sha256_json
from ..tasks.base import Problem
from .batch import CalibBatch, build_calib_batch
from .cache import cache_path, head_result, new_result, read_cache, seal, write_scores
from .engine import ScoringEngine, subset_losses, summarise_effects

log = logging.getLogger(__name__)


def scores_cache_key(model_fp: str, batch: CalibBatch, cfg: ScoreConfig, dtype) -> str:
    return sha256_json({"model": model_fp, "calib": batch.fingerprint(), "config": cfg.key(), "dtype": str(dtype), "v": 2})


def _put(result: dict, l: int, effects: torch.Tensor, how: str | None = None) -> None:
    """Layer ``l``'s per-unit summaries from effects (units, K)."""
    result["layers"][str(l)] = [{**summarise_effects(e), **({"how": how} if how else {})} for e in effects]


def compute_scores(model, batch: CalibBatch, cfg: ScoreConfig, *, cache_key: str | None = None, use_cache: bool = True,
                   time_budget_s: float | None = None, progress: bool = True,
                   on_layer: Callable[[dict], None] | None = None, model_fp: str | None = None) -> dict:
    """Score every head. Exact/naive results are saved after each layer under the cache key, so an
    interrupted or time-limited run resumes where it stopped; a finished result is reused."""
    geom = head_geometry(model.config)
    L, H, K = geom.num_layers, geom.num_heads, cfg.subsets
    path = cache_path(cache_key) if cache_key else None
    result = head_result(geom, cfg.mode, cfg.subsets)
    cached = read_cache(path, num_layers=L, num_units=H, target="heads", model_fp=model_fp) if (path and use_cache) else None
    if cached is not None:
        if cached["complete"]:
            cached["cache_hit"] = True
            return cached
        result = cached
        log.info("resuming scores from %s (%d of %d layers done)", path, len(result["layers"]), L)
    result["cache_hit"] = False
    result["resumed_layers"] = len(result["layers"])
    if model_fp:
        result.setdefault("hashes", {})["model"] = model_fp
    engine = ScoringEngine(model, batch, K, cfg.max_batch_tokens)
    t0 = time.perf_counter()
    prior_seconds = result.get("seconds", 0.0)
    intact = engine.intact()
    result["intact_loss"] = {"subsets": [float(v) for v in intact], "all": float(engine.intact_rows.sum() / batch.tokens.sum())}

    def save():
        result["seconds"] = prior_seconds + time.perf_counter() - t0
        result["layer_forwards"] = result.get("layer_forwards", 0) + engine.forwards
        engine.forwards = 0
        if path is not None:
            write_scores(path, result)
        else:
            seal(result)

    if cfg.mode in ("attribution", "hybrid"):
        attr = engine.attribution_effects()  # (L, H, K)
        for l in range(L):
            _put(result, l, attr[l], "attribution" if cfg.mode == "hybrid" else None)
        if cfg.mode == "hybrid":
            refine(engine, result, attr, cfg.refine_fraction, progress, intact)
        result["complete"] = True
        save()
        return result

    todo = [l for l in range(L) if str(l) not in result["layers"]]
    bar = tqdm(total=L * H, initial=(L - len(todo)) * H, desc=f"CAP {cfg.mode} heads", unit="head", disable=not progress)
    for l in todo:
        if time_budget_s is not None and time.perf_counter() - t0 > time_budget_s:
            save()
            bar.close()
            raise ScoringIncomplete(
                f"time budget of {time_budget_s:.0f}s reached: scored {len(result['layers'])} of {L} layers "
                f"({len(result['layers']) * H} of {L * H} heads); partial result kept in the cache, rerun to resume",
                partial_path=path)
        if cfg.mode == "naive":
            rows = torch.stack([engine.naive_rows(l, h) for h in range(H)])
        else:
            rows = engine.masked_rows(l, range(H))  # (H, N)
        _put(result, l, subset_losses(rows, batch, K).cpu() - intact.cpu()[None])  # (H, K)
        save()  # Ctrl-C now loses at most the layer in progress
        bar.update(H)
        if on_layer:
            on_layer(result)
    bar.close()
    result["complete"] = True
    save()
    return result


def refine_order(attr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Which units to re-score exactly first, and what each costs. attr (L, U, K) -> (priority (L*U,),
    cost (L*U,)). Priority = expected rank error per unit of cost: the first-order estimate's error
    grows with the subsets' disagreement (spread) and the effect's size, and a given error moves a
    unit's rank more where many units have similar estimates (density); masking layer l costs L - l
    layer-forwards. (Measured on the embedded model: attribution errors are not systematic per layer,
    so no per-layer correction; see docs/methods.md.)"""
    L, U, _ = attr.shape
    med = attr.median(dim=-1).values.reshape(-1).double()  # (L*U,)
    spread = (attr.max(-1).values - attr.min(-1).values).reshape(-1).double()
    bw = 0.5 * float(med.std()) * med.numel() ** (-0.2) + 1e-12  # Silverman-style bandwidth
    density = torch.exp(-0.5 * ((med[:, None] - med[None, :]) / bw) ** 2).sum(1)
    cost = torch.arange(L, 0, -1, dtype=torch.float64).repeat_interleave(U)  # (L*U,): L - l
    return (spread + 0.5 * med.abs()) * density / cost, cost


def select_units(prio: torch.Tensor, cost: torch.Tensor, fraction: float) -> tuple[list[int], float]:
    """Highest priority first, every unit that still fits in ``fraction`` of the total cost:
    (chosen flat indices, cost spent)."""
    budget, spent, chosen = fraction * float(cost.sum()), 0.0, []
    for idx in prio.argsort(descending=True).tolist():
        if spent + cost[idx] <= budget:
            chosen.append(idx)
            spent += float(cost[idx])
    return chosen, spent


def refine(engine: ScoringEngine, result: dict, attr: torch.Tensor, fraction: float, progress: bool, intact,
           target: str = "heads") -> None:
    """Exactly re-score units, most uncertain rank per cost first (``refine_order``), until
    ``fraction`` of the cost of scoring every unit exactly is spent."""
    L, H, _ = attr.shape
    prio, cost = refine_order(attr)
    chosen, spent = select_units(prio, cost, fraction)
    n = len(chosen)
    by_layer: dict[int, list[int]] = {}
    for idx in chosen:
        by_layer.setdefault(idx // H, []).append(idx % H)
    bar = tqdm(total=n, desc=f"CAP hybrid refine ({target})", unit="unit", disable=not progress)
    for l, units in sorted(by_layer.items()):
        rows = engine.masked_rows(l, units, target)
        eff = subset_losses(rows, engine.batch, engine.K).cpu() - intact.cpu()[None]
        for u, e in zip(units, eff):
            result["layers"][str(l)][u] = {**summarise_effects(e), "how": "exact"}
        bar.update(len(units))
    bar.close()
    result["refined_units"] = n
    result["refined_cost_share"] = spent / float(cost.sum())


def calibrate(model, tokenizer, problems: Sequence[Problem], cfg: ScoreConfig, budget: BudgetConfig,
              model_fp: str | None) -> tuple[CalibBatch, str, torch.dtype, str]:
    """Calibration batch, model fingerprint, dtype and the head-score cache key (shared by head and
    channel scoring)."""
    from ..models import model_fingerprint

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batch = build_calib_batch(tokenizer, problems, cfg.subsets, budget, pad_id=pad)
    model_fp = model_fp or model_fingerprint(model)
    dtype = next(model.parameters()).dtype
    return batch, model_fp, dtype, scores_cache_key(model_fp, batch, cfg, dtype)


def score_heads(model, tokenizer, problems: Sequence[Problem], cfg: ScoreConfig, budget: BudgetConfig | None = None,
                *, force: bool = False, progress: bool = True, model_fp: str | None = None,
                distributed: bool = False, head_group: int | None = None) -> dict | None:
    """Calibration batch -> cache key -> scores (reused when cached unless ``force``)."""
    budget = budget or BudgetConfig()
    batch, model_fp, dtype, key = calibrate(model, tokenizer, problems, cfg, budget, model_fp)
    if distributed:
        if cfg.mode != "exact":
            raise ConfigError(f"distributed scoring runs the exact mode; got {cfg.mode!r}")
        from ..distributed import distributed_scores

        result = distributed_scores(model, batch, cfg, key, model_fp, progress=progress, head_group=head_group, force=force)
        if result is None:  # not rank 0
            return None
    else:
        result = compute_scores(model, batch, cfg, cache_key=key, use_cache=not force, time_budget_s=budget.seconds,
                                progress=progress, model_fp=model_fp)
    result["hashes"] = {"model": model_fp, "calibration": batch.fingerprint(), "cache_key": key}
    result["config"] = {**cfg.key(), "problems": batch.n, "tokens_per_problem": budget.tokens_per_problem,
                        "answer_tokens": int(batch.tokens.sum()), "dtype": str(dtype),
                        "device": str(next(model.parameters()).device)}
    return seal(result)


def score_channels(model, tokenizer, problems: Sequence[Problem], cfg: ScoreConfig, budget: BudgetConfig | None = None,
                   *, group: int = 32, refine_fraction: float = 0.1, force: bool = False, progress: bool = True,
                   model_fp: str | None = None) -> dict:
    """CAP scores of MLP channel groups (``group`` consecutive intermediate channels, masked at
    down_proj's input): a first-order ranking for every group (one forward + backward), then the
    ``refine_fraction`` least certain groups re-scored by exact masking. Cached like head scores."""
    budget = budget or BudgetConfig()
    batch, model_fp, dtype, head_key = calibrate(model, tokenizer, problems, cfg, budget, model_fp)
    key = sha256_json({"scores": head_key, "target": "channels", "group": group, "refine": refine_fraction, "v": 2})
    path = cache_path(key)
    engine = ScoringEngine(model, batch, cfg.subsets, cfg.max_batch_tokens, channel_group=group)
    G, _ = engine.units("channels")
    L = head_geometry(model.config).num_layers
    cached = None if force else read_cache(path, num_layers=L, num_units=G, target="channels", model_fp=model_fp)
    if cached is not None and cached["complete"]:
        cached["cache_hit"] = True
        return cached
    t0 = time.perf_counter()
    intact = engine.intact()
    attr = engine.attribution_effects("channels")  # (L, G, K)
    result = new_result("channels", "attribution+exact", L, G, cfg.subsets, group=group)
    result["intact_loss"] = {"subsets": [float(v) for v in intact], "all": float(engine.intact_rows.sum() / batch.tokens.sum())}
    for l in range(L):
        _put(result, l, attr[l], "attribution")
    refine(engine, result, attr, refine_fraction, progress, intact, target="channels")
    result["complete"] = True
    result["seconds"] = time.perf_counter() - t0
    result["layer_forwards"] = engine.forwards
    result["hashes"] = {"model": model_fp, "calibration": batch.fingerprint(), "cache_key": key}
    write_scores(path, result)
    result["cache_hit"] = False
    return result
