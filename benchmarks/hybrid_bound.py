"""How far can attribution + exact refinement go? (issue #22's hybrid target: >= 20x naive at
Spearman >= 0.95 vs exact). On the same calibration problems as speed.py, the exact scores and the
first-order (attribution) estimates are computed once; every refinement rule is then replayed
offline (a refined unit takes its exact value, so no rule needs its own scoring run):

* the shipped rule (``refine_order``) and simpler priorities, at several cost shares;
* the oracle: units chosen by their true |attribution - exact| per cost, the best any rule that
  picks units from these estimates can do at that share;
* the cost share the 20x target leaves, from speed.json's timings of the same modes.

    python benchmarks/hybrid_bound.py [--problems 12] [--draws 0 1]

Writes benchmarks/results/hybrid_bound.json.
"""

from __future__ import annotations

import argparse
import json

import torch

from _common import RESULTS, table, write_result
from cap_edge.config import ScoreConfig
from cap_edge.models import load_model
from cap_edge.scoring import build_calib_batch, compute_scores, score_matrix, spearman
from cap_edge.scoring.engine import ScoringEngine
from cap_edge.scoring.run import refine_order, select_units
from cap_edge.tasks import calibration_problems

SHARES = (0.1, 0.15, 0.2, 0.25, 0.3)


def replay(attr_m: torch.Tensor, exact_m: torch.Tensor, prio: torch.Tensor, cost: torch.Tensor, share: float) -> float:
    """Spearman vs exact of the hybrid that refines the units ``prio`` picks within ``share`` of the cost."""
    chosen, _ = select_units(prio, cost, share)
    h = attr_m.flatten().clone()
    h[chosen] = exact_m.flatten()[chosen]
    return spearman(h.tolist(), exact_m.flatten().tolist())


def draw_bound(lm, n: int, draw: int) -> dict:
    tok = lm.tokenizer
    batch = build_calib_batch(tok, calibration_problems("embedded", n, draw=draw), 3, pad_id=tok.pad_token_id)
    exact = score_matrix(compute_scores(lm.model, batch, ScoreConfig(mode="exact"), progress=False))  # (L, H)
    attr = ScoringEngine(lm.model, batch, 3, ScoreConfig().max_batch_tokens).attribution_effects()  # (L, H, K)
    attr_m = attr.median(-1).values  # K = 3: the middle subset, as score_matrix's median
    L, H, _ = attr.shape
    prio, cost = refine_order(attr)
    spread = (attr.max(-1).values - attr.min(-1).values).flatten()
    err = (attr_m - exact).flatten().abs()
    rules = {"shipped (refine_order)": prio, "subset spread / cost": spread / cost,
             "|estimate| / cost": attr_m.flatten().abs() / cost, "oracle |error| / cost": err / cost}
    # the best a per-layer affine correction of the estimates could do, fitted on every unit's exact score
    fit = attr_m.clone()
    for l in range(L):
        A = torch.stack([attr_m[l], torch.ones(H, dtype=attr_m.dtype)], 1)  # (H, 2)
        fit[l] = (A @ torch.linalg.lstsq(A, exact[l][:, None]).solution)[:, 0]
    return {"draw": draw, "problems": batch.n, "units": L * H,
            "attribution_spearman": spearman(attr_m.flatten().tolist(), exact.flatten().tolist()),
            "per_layer_affine_oracle_spearman": spearman(fit.flatten().tolist(), exact.flatten().tolist()),
            "rules": {name: {f"{s:.2f}": replay(attr_m, exact, p, cost, s) for s in SHARES} for name, p in rules.items()}}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--problems", type=int, default=12)
    ap.add_argument("--draws", type=int, nargs="+", default=[0, 1])
    args = ap.parse_args()
    lm = load_model(None, device="cpu", dtype="fp32")
    draws = []
    for d in args.draws:
        draws.append(draw_bound(lm, args.problems, d))
        print(json.dumps(draws[-1]), flush=True)
    speed = json.loads((RESULTS / "speed.json").read_text())["scoring"]["modes"]
    # hybrid time ~ attribution + share x exact: the share that still gives 20x naive
    share_20x = (speed["naive"]["seconds"] / 20 - speed["attribution"]["seconds"]) / speed["exact"]["seconds"]
    rows = []
    for name in draws[0]["rules"]:
        for d in draws:
            rows.append([name, d["draw"]] + [f"{d['rules'][name][f'{s:.2f}']:.3f}" for s in SHARES])
    md = table(rows, ["refinement rule", "draw"] + [f"share {s:.2f}" for s in SHARES])
    print(md)
    write_result("hybrid_bound", {"problems": args.problems, "shares": list(SHARES), "draws": draws,
                                  "share_for_20x": share_20x, "share_for_20x_from": "speed.json (naive, attribution, exact seconds)",
                                  "table_md": md})


if __name__ == "__main__":
    main()
