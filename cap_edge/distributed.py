"""CAP exact scoring across processes with torch.distributed (torchrun; NCCL on GPUs, gloo on CPUs).

Jobs are (layer, head group) pairs. A job at layer l recomputes layers l..L-1, so its cost is
proportional to (L - l) x heads; jobs are assigned by a static longest-processing-time-first
balance that every rank computes identically. Each rank recomputes the intact pass itself: one
forward, about 1/(L x H / 2) of the exact work, cheaper than shipping every layer's hidden states
between processes. Every finished job is written to the cache at once (atomically), so a restart
after a failure recomputes only the missing jobs. Rank 0 gathers and writes the same result a
single process writes.
"""

from __future__ import annotations

import datetime
import json
import os
import time
from pathlib import Path

import torch

from .config import ScoreConfig
from .io import cache_dir, write_json
from .scoring.batch import CalibBatch
from .scoring.cache import cache_path, head_result, read_cache, write_scores
from .scoring.engine import ScoringEngine, subset_losses, summarise_effects


def world() -> tuple[int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def init(timeout_s: float = 1800.0) -> tuple[int, int]:
    import torch.distributed as dist

    rank, size = world()
    if size > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return rank, size


def shutdown() -> None:
    """Tear the process group down before the interpreter exits. Left to exit-time destructors, a
    gloo rank that finished first sometimes aborted ("terminate called without an active
    exception", SIGABRT) while its peer was still working, failing a run whose results were all
    written (seen under CPU load in the two-process test)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def plan_jobs(num_layers: int, num_heads: int, group: int, ranks: int) -> list[list[tuple[int, list[int]]]]:
    """Static balance: jobs (layer, heads) sorted by cost (L - layer) x heads, each given to the
    least-loaded rank so far. Returns the job list of every rank."""
    jobs = [(l, list(range(h, min(h + group, num_heads)))) for l in range(num_layers) for h in range(0, num_heads, group)]
    cost = lambda j: (num_layers - j[0]) * len(j[1])  # noqa: E731
    load = [0.0] * ranks
    out: list[list] = [[] for _ in range(ranks)]
    for j in sorted(jobs, key=lambda j: (-cost(j), j[0], j[1][0])):
        r = min(range(ranks), key=lambda i: (load[i], i))
        out[r].append(j)
        load[r] += cost(j)
    return out


def _job_path(key: str, layer: int, heads: list[int]) -> Path:
    return cache_dir() / "scores" / f"{key}.jobs" / f"{layer}-{heads[0]}-{heads[-1]}.json"


def _job_ok(path: Path, heads: list[int], K: int) -> bool:
    """A finished job file that holds one K-vector of effects per head; anything else is redone."""
    try:
        data = json.loads(path.read_text())
        eff = data["effects"]
        return data["heads"] == heads and len(eff) == len(heads) and all(len(e) == K for e in eff)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def distributed_scores(model, batch: CalibBatch, cfg: ScoreConfig, cache_key: str, model_fp: str, progress: bool = True,
                       head_group: int | None = None, force: bool = False) -> dict | None:
    """Run this rank's jobs; rank 0 returns the full result (others return None). A complete cached
    result is reused unless ``force``; with ``force`` one rank clears the jobs first (the others wait,
    or they could delete jobs another rank has just written)."""
    import torch.distributed as dist

    rank, size = world()
    engine = ScoringEngine(model, batch, cfg.subsets, cfg.max_batch_tokens)
    g = engine.g
    L, H, K = g.num_layers, g.num_heads, cfg.subsets
    done = cache_path(cache_key)
    if not force:
        cached = read_cache(done, num_layers=L, num_units=H, target="heads", model_fp=model_fp) if rank == 0 else None
        hit = [cached is not None and cached["complete"]]
        if size > 1:
            dist.broadcast_object_list(hit, src=0)
        if hit[0]:
            if rank != 0:
                return None
            cached["cache_hit"] = True
            return cached
    else:
        if rank == 0:
            import shutil

            shutil.rmtree(done.with_suffix(".jobs"), ignore_errors=True)
            done.unlink(missing_ok=True)
        barrier()
    group = head_group or H
    mine = plan_jobs(L, H, group, size)[rank]
    t0 = time.perf_counter()
    intact = engine.intact()
    busy, computed, reused = 0.0, 0, 0
    for l, heads in mine:
        p = _job_path(cache_key, l, heads)
        if _job_ok(p, heads, K):
            reused += 1
            continue
        s = time.perf_counter()
        rows = engine.masked_rows(l, heads)
        eff = subset_losses(rows, batch, K).cpu() - intact.cpu()[None]  # (len(heads), K)
        write_json(p, {"layer": l, "heads": heads, "effects": eff.tolist()})
        busy += time.perf_counter() - s
        computed += 1
    stats = {"rank": rank, "jobs": len(mine), "computed": computed, "reused": reused, "busy_s": busy,
             "wall_s": time.perf_counter() - t0, "cost_units": sum((L - l) * len(h) for l, h in mine)}
    if size > 1:
        all_stats = [None] * size
        dist.all_gather_object(all_stats, stats)  # also a barrier: every job file is written
    else:
        all_stats = [stats]
    if rank != 0:
        return None
    result = head_result(g, cfg.mode, cfg.subsets)
    result["intact_loss"] = {"subsets": [float(v) for v in intact], "all": float(engine.intact_rows.sum() / batch.tokens.sum())}
    per_layer: dict[int, list] = {l: [None] * H for l in range(L)}
    for l in range(L):
        for h0 in range(0, H, group):
            heads = list(range(h0, min(h0 + group, H)))
            data = json.loads(_job_path(cache_key, l, heads).read_text())
            for h, e in zip(heads, data["effects"]):
                per_layer[l][h] = summarise_effects(torch.tensor(e, dtype=torch.float64))
    result["layers"] = {str(l): per_layer[l] for l in range(L)}
    result["complete"] = True
    result["seconds"] = max(s["wall_s"] for s in all_stats)
    result["distributed"] = {"world_size": size, "backend": dist.get_backend() if size > 1 else "none",
                             "head_group": group, "ranks": all_stats, "intact_pass": "recomputed per rank"}
    result["cache_hit"] = False
    write_scores(done, result)
    return result
