"""Is SparseGPT 2:4 decided by float round-off? The same draw-0 calibration statistics pruned twice
with different CPU thread counts (the statistics' float32 sums are accumulated in another order):
mask agreement, and where the masks first differ. cap-sparsegpt's N:M solve (damping 0.1 + refit)
beside it.

    python benchmarks/nm_threads.py [--threads 1 2]

Writes benchmarks/results/nm_threads.json.
"""

from __future__ import annotations

import argparse
import time

import torch

from _common import write_result
from cap_edge.config import BudgetConfig, PruneConfig
from cap_edge.models import load_model
from cap_edge.pruning import prune_model
from cap_edge.scoring import build_calib_batch
from cap_edge.tasks import calibration_problems
from pruning import mask_agreement, zero_masks


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", nargs=2, type=int, default=[1, 2])
    ap.add_argument("--configs", nargs="+", default=["sparsegpt", "sparsegpt damp 0.1 refit 30"])
    args = ap.parse_args()
    configs = {"sparsegpt": {}, "sparsegpt damp 0.1 refit 30": {"sparsegpt_damp": 0.1, "mask_refit_iters": 30}}
    lm = load_model(None, device="cpu")
    tok = lm.tokenizer
    stats = calibration_problems("embedded", PruneConfig().stats_problems, draw=0)
    batch = build_calib_batch(tok, stats, 3, BudgetConfig(problems=len(stats)), pad_id=tok.pad_token_id)
    original = {k: v.clone() for k, v in lm.model.state_dict().items()}
    rows = {}
    for name in args.configs:
        masks, weights = {}, {}
        for th in args.threads:
            torch.set_num_threads(th)
            lm.model.load_state_dict(original)
            t = time.perf_counter()
            prune_model(lm.model, PruneConfig(method="sparsegpt", pattern="2:4", **configs[name]), batch, progress=False)
            masks[th] = zero_masks(lm.model)
            weights[th] = {n: m.weight.detach().clone() for n, m in lm.model.named_modules() if n in masks[th]}
            print(name, th, "threads", f"{time.perf_counter() - t:.0f} s", flush=True)
        a, b = (masks[th] for th in args.threads)
        wa, wb = (weights[th] for th in args.threads)
        names = list(a)
        rows[name] = {"mask_agreement": mask_agreement(a, b),
                      "first_differing_matrix": next((n for n in names if not torch.equal(a[n], b[n])), None),
                      "max_abs_weight_diff": max(float((wa[n] - wb[n]).abs().max()) for n in names)}
        print(name, rows[name], flush=True)
    write_result("nm_threads", {"threads": args.threads, "pattern": "2:4", "draw": 0, "statistics_problems": batch.n,
                                "configs": {k: configs[k] for k in args.configs}, "rows": rows})


if __name__ == "__main__":
    main()
