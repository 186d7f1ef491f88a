"""What the mask refit's early stop and float32 products cost in reconstruction, and what they save
in prune time (issue #17: a CAP method within 2x of SparseGPT's prune time), on the embedded model's
2:4 statistics (calibration draw 0, cap-sparsegpt's token-weighted Hessians, pruning.py's scoring).

1. Per matrix, on the statistics the new default's run sees: the refit objective
   tr((W - W0) H (W - W0)^T) after the fixed 30 float64 steps (the previous default) and after the
   stopped, mixed-precision refit (the default), each as its excess over 60 float64 steps (the
   optimum to ~1e-4), with their CPU seconds and the largest weight difference between the two.
2. Whole prunes timed side by side in this one run (process CPU seconds, 1 thread recommended):
   SparseGPT 2:4, cap-sparsegpt 2:4 with the previous refit, cap-sparsegpt 2:4 with the default.

    OMP_NUM_THREADS=1 python benchmarks/refit_speed.py

Writes benchmarks/results/refit_speed.json.
"""

from __future__ import annotations

import statistics
import time

import torch

import cap_edge.pruning.apply as apply
from _common import write_result
from pruning import calibrate, prune_timed
from cap_edge.config import PruneConfig
from cap_edge.models import load_model
from cap_edge.pruning.methods import GUIDED_OBS
from cap_edge.pruning.sparsegpt import damped_hessian, refit_on_mask

PREVIOUS = {"mask_refit_tol": 0.0, "mask_refit_products": "float64"}  # 30 float64 steps, every one


def objective(W0, W, H):
    D = (W - W0).double()
    return float(((D @ H) * D).sum())


def main():
    torch.manual_seed(0)
    lm = load_model(None, device="cpu")
    original = {k: v.clone() for k, v in lm.model.state_dict().items()}
    cal = calibrate(lm, original, "embedded", 0, "hybrid")
    obs = GUIDED_OBS
    per = []

    def compared(weight, pruned, hessian, keep, iters, percdamp, dtype, tol, product_dtype):
        H, _ = damped_hessian(hessian, percdamp, torch.float64)
        t = time.process_time()
        new = refit_on_mask(weight, pruned, hessian, keep, iters, percdamp, dtype, tol, product_dtype)
        t_new = time.process_time() - t
        t = time.process_time()
        old = refit_on_mask(weight, pruned, hessian, keep, iters, percdamp, dtype)
        t_old = time.process_time() - t
        best = refit_on_mask(weight, pruned, hessian, keep, 60, percdamp, dtype)
        f = {k: objective(weight, x, H) for k, x in (("start", pruned), ("new", new), ("old", old), ("best", best))}
        per.append({"shape": list(weight.shape), "excess_new": (f["new"] - f["best"]) / f["best"],
                    "excess_old": (f["old"] - f["best"]) / f["best"], "gain_share_new": (f["start"] - f["new"]) / (f["start"] - f["best"]),
                    "seconds_new": t_new, "seconds_old": t_old, "max_weight_diff": float((new - old).abs().max())})
        return new

    apply.refit_on_mask = compared  # prune_model's refit, compared on every matrix
    cfg = PruneConfig(method="cap-sparsegpt", pattern="2:4")
    try:
        apply.prune_model(lm.model, cfg, cal["batch"], cal["heads"], progress=False, channel_scores=cal["chans"])
    finally:
        apply.refit_on_mask = refit_on_mask
    mats = {"matrices": len(per), **{k: {"median": statistics.median(r[k] for r in per), "max": max(r[k] for r in per)}
                                     for k in ("excess_new", "excess_old", "max_weight_diff")},
            "gain_share_new_min": min(r["gain_share_new"] for r in per),
            "refit_seconds": {"new": sum(r["seconds_new"] for r in per), "old": sum(r["seconds_old"] for r in per)}}
    print(f"{len(per)} matrices: objective excess over 60 float64 steps, median/max: default "
          f"{mats['excess_new']['median']:.2e}/{mats['excess_new']['max']:.2e}, previous 30 steps "
          f"{mats['excess_old']['median']:.2e}/{mats['excess_old']['max']:.2e}; refit CPU s {mats['refit_seconds']['new']:.0f} "
          f"vs {mats['refit_seconds']['old']:.0f}", flush=True)
    prunes = {}
    for name, method, over in (("sparsegpt", "sparsegpt", {}), ("cap-sparsegpt (previous refit)", "cap-sparsegpt", PREVIOUS),
                               ("cap-sparsegpt", "cap-sparsegpt", {})):
        rep, cpu = prune_timed(lm, original, cal, PruneConfig(method=method, pattern="2:4", **over))
        prunes[name] = {"prune_seconds": cpu, "obs": rep["obs"]}
        print(f"{name}: {prunes[name]['prune_seconds']:.0f} CPU s", flush=True)
    base = prunes["sparsegpt"]["prune_seconds"]
    ratios = {k: v["prune_seconds"] / base for k, v in prunes.items() if k != "sparsegpt"}
    print("vs SparseGPT: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))
    write_result("refit_speed", {"model": lm.source, "threads": torch.get_num_threads(), "default_obs": obs,
                                 "matrices": mats, "prunes": prunes, "ratio_to_sparsegpt": ratios, "per_matrix": per})


if __name__ == "__main__":
    main()
