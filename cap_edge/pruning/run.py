"""One prune stage, used by ``cap-edge prune`` and by the build: calibration batch -> scores (from
a file, the cache, or computed) -> prune -> save. With ``cache=True`` the pruned model is kept in
the cache under a content key (weights, calibration, config, scores) and reused only after it
passes verification (every file's sha256, and the sparsity re-measured from the weights)."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from ..config import BudgetConfig, PruneConfig, ScoreConfig
from ..errors import CapEdgeError
from ..io import cache_dir, sha256_json, verify_digests
from ..prune_io import measured_sparsity, save_pruned
from ..scoring import build_calib_batch, load_scores_file, score_channels, score_heads
from ..tasks import calibration_problems
from .apply import prune_model
from .methods import get_method, needs_cap_scores, obs_settings
from .structured import refit_batch

log = logging.getLogger(__name__)


@dataclass
class PruneResult:
    dir: Path  # the saved pruned model
    report: dict  # sparsity.json
    cache_hit: bool
    head_scores: dict | None
    channel_scores: dict | None
    calibration: dict  # {"spec", "problems", "hash"} of the batch pruning used


def prune_stage(lm, cfg: PruneConfig, *, calib: str = "embedded", budget: BudgetConfig | None = None,
                score_cfg: ScoreConfig | None = None, scores_file: str | Path | None = None, seed: int = 0,
                draw: int = 0, model_fp: str | None = None, out: str | Path | None = None, overwrite: bool = False,
                progress: bool = True) -> PruneResult:
    """Prune ``lm`` (models.LoadedModel; changed in place) and save it. ``out`` = None keeps the
    result in the cache (verified before reuse); a directory writes it there (refusing a non-empty
    one unless ``overwrite``). ``draw``: which subset of the calibration split (calibration_problems)."""
    from ..arch import head_geometry
    from ..models import model_fingerprint

    budget = budget or BudgetConfig()
    score_cfg = score_cfg or ScoreConfig()
    method = get_method(cfg.method)
    model_fp = model_fp or model_fingerprint(lm.model)
    problems = calibration_problems(calib, budget.problems, seed, draw=draw)
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    if cfg.structured and cfg.refit:  # the refit's larger batch is the only one pruning uses
        batch = refit_batch(lm.tokenizer, calib, cfg, budget.tokens_per_problem, seed, draw=draw)
    elif method.stats != "none" and not cfg.structured:  # Wanda / SparseGPT statistics: forward passes only
        stats = calibration_problems(calib, cfg.stats_problems, seed, draw=draw)
        batch = build_calib_batch(lm.tokenizer, stats, score_cfg.subsets,
                                  BudgetConfig(problems=len(stats), tokens_per_problem=budget.tokens_per_problem), pad_id=pad)
    else:
        batch = build_calib_batch(lm.tokenizer, problems, score_cfg.subsets, budget, pad_id=pad)
    head_scores = channel_scores = None
    if needs_cap_scores(cfg):  # not for cap-wanda's token weights alone: they read no CAP scores
        if scores_file is not None:
            g = head_geometry(lm.model.config)
            head_scores = load_scores_file(scores_file, num_layers=g.num_layers, num_units=g.num_heads, target="heads",
                                           model_fp=model_fp, require_complete=True)
        else:
            head_scores = score_heads(lm.model, lm.tokenizer, problems, score_cfg, budget, progress=progress, model_fp=model_fp)
        if cfg.structured or method.uses_channels:
            channel_scores = score_channels(lm.model, lm.tokenizer, problems, score_cfg, budget, group=cfg.channel_group,
                                            refine_fraction=cfg.channel_refine, progress=progress, model_fp=model_fp)
    calibration = {"spec": calib, "draw": draw, "problems": batch.n, "hash": batch.fingerprint()}
    extra = {"model": lm.source, "calibration": calibration,
             "head_scores": str(scores_file) if scores_file else (head_scores or {}).get("hashes", {}).get("cache_key"),
             "channel_scores": (channel_scores or {}).get("hashes", {}).get("cache_key")}
    if out is None:
        # the defaults a None field resolves to (allocation signal, guidance, OBS solve) are in the key, so a changed
        # default cannot return a model pruned under the old one
        resolved = {**cfg.guidance, "obs": obs_settings(cfg, method)}
        key = sha256_json({"model": model_fp, "calib": batch.fingerprint(), "prune": asdict(cfg), "resolved": resolved,
                           "scores": (head_scores or {}).get("content_sha256"),
                           "channel_scores": (channel_scores or {}).get("content_sha256"), "v": 2})
        target = cache_dir() / "pruned" / key[:24]
        report = _cached_report(target)
        if report is not None:
            return PruneResult(target, report, True, head_scores, channel_scores, calibration)
    else:
        target = Path(out)
    report = prune_model(lm.model, cfg, batch, head_scores, progress=progress, channel_scores=channel_scores)
    save_pruned(lm.model, lm.tokenizer, target, report, extra, overwrite=overwrite or out is None, source_dir=lm.path,
                digests=out is None)
    return PruneResult(target, {**report, **extra}, False, head_scores, channel_scores, calibration)


def _cached_report(d: Path) -> dict | None:
    """The report of a verified cache entry, else None (a damaged entry is removed, with a warning)."""
    if not d.exists():
        return None
    try:
        if not verify_digests(d):
            raise CapEdgeError("file digests do not match (damaged or edited)")
        report = json.loads((d / "sparsity.json").read_text())
        measured = measured_sparsity(d, report)
        if abs(measured - report["achieved_sparsity"]) > 1e-6:
            raise CapEdgeError(f"recorded sparsity {report['achieved_sparsity']:.6f}, measured {measured:.6f}")
        return report
    except (CapEdgeError, OSError, ValueError, KeyError) as e:
        log.warning("discarding pruned-model cache entry %s (%s); pruning again", d, e)
        shutil.rmtree(d, ignore_errors=True)
        return None
