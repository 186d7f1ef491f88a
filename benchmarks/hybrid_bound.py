"""How far can attribution + exact refinement go? (issue #22's hybrid target: >= 20x naive at
Spearman >= 0.95 vs exact). On the same calibration problems as speed.py, the exact scores and the
first-order (attribution) estimates are computed once; every refinement rule is then replayed
offline (a refined unit takes its exact value, so no rule needs its own scoring run):

* the shipped rule (``refine_order``) and simpler priorities, at several cost shares;
* the oracle: units chosen by their true |attribution - exact| per cost, the best any rule that
  picks units from these estimates can do at that share;
* the cost share the 20x target leaves, from speed.json's timings of the same modes;
* better first-order estimates ("look-ahead k"): a masked head's layer and the k - 1 after it run
  exactly, the rest of the model is linearised with the gradient at layer l + k's input, for k
  layer-forwards per head instead of L - l; alone, and with the oracle's refinement in the share
  the 20x target leaves after paying for them.

    python benchmarks/hybrid_bound.py [--problems 12] [--draws 0 1]

Writes benchmarks/results/hybrid_bound.json.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from _common import RESULTS, table, write_result
from cap_edge.config import ScoreConfig
from cap_edge.models import load_model
from cap_edge.scoring import build_calib_batch, compute_scores, score_matrix, spearman, subset_losses
from cap_edge.scoring.engine import ScoringEngine, head_gate
from cap_edge.scoring.run import refine_order, select_units
from cap_edge.tasks import calibration_problems

SHARES = (0.1, 0.15, 0.2, 0.25, 0.3)


def replay(attr_m: torch.Tensor, exact_m: torch.Tensor, prio: torch.Tensor, cost: torch.Tensor, share: float) -> float:
    """Spearman vs exact of the hybrid that refines the units ``prio`` picks within ``share`` of the cost."""
    chosen, _ = select_units(prio, cost, share)
    h = attr_m.flatten().clone()
    h[chosen] = exact_m.flatten()[chosen]
    return spearman(h.tolist(), exact_m.flatten().tolist())


def lookahead(engine: ScoringEngine, depths) -> dict:
    """Look-ahead-k estimates (L, H, K) per depth k and their cost: masked - intact loss of each
    head ~ grad(L at layer l+k's input) . (masked - intact input of layer l+k); layers l+k >= L exact."""
    dec, b, K = engine.dec, engine.batch, engine.K
    L, H, hd = len(dec.layers), engine.g.num_heads, engine.g.head_dim
    intact = engine.intact()
    sub = b.subset
    w = 1.0 / torch.stack([b.tokens[sub == k].sum() for k in range(K)])[sub]  # (N,): subset token means
    t0 = time.perf_counter()
    with torch.enable_grad():
        coll: list[torch.Tensor] = []
        hf = dec.run(dec.embed(b.input_ids).detach().requires_grad_(True), 0, collect=coll)  # coll[l]: layer l's input (N, T, D)
        grads = [g.detach() for g in torch.autograd.grad((dec.answer_nll(hf, b)[0] * w).sum(), coll)]
    grad_s = time.perf_counter() - t0
    out = {}
    for k in depths:
        t0, forwards = time.perf_counter(), 0
        est = torch.zeros(L, H, K, dtype=torch.float64)
        with torch.inference_mode():
            for l in range(L):
                if l + k >= L:  # nothing left to linearise: exact
                    est[l] = subset_losses(engine.masked_rows(l, range(H)), b, K).cpu() - intact.cpu()[None]
                    forwards += (L - l) * H
                    continue
                gate = 1 - torch.eye(H).repeat_interleave(b.n, 0)  # (H*N, H): copy g masks head g
                with head_gate(dec.o_proj(l), gate, hd):
                    hk = dec.run(engine.layer_input(l).repeat(H, 1, 1), l, l + k)  # (H*N, T, D)
                delta = hk.view(H, b.n, *hk.shape[1:]) - engine.layer_input(l + k)[None]  # (H, N, T, D)
                per_row = (delta * grads[l + k][None]).sum((-1, -2)).double()  # (H, N)
                est[l] = torch.stack([per_row[:, sub == j].sum(-1) for j in range(K)], -1)
                forwards += k * H
        out[k] = {"est": est, "seconds": grad_s + time.perf_counter() - t0, "layer_forwards": forwards}
    return out


def draw_bound(lm, n: int, draw: int, share_20x: float) -> dict:
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
    engine = ScoringEngine(lm.model, batch, 3, ScoreConfig().max_batch_tokens)
    exact_forwards = sum((L - l) * H for l in range(L))
    look = {}
    for k, r in lookahead(engine, (1, 2, 3)).items():
        m = r["est"].median(-1).values
        left = share_20x - r["layer_forwards"] / exact_forwards  # what refinement may still spend
        e = (m - exact).flatten().abs()
        p, _ = refine_order(r["est"])
        look[str(k)] = {"seconds": r["seconds"], "layer_forwards": r["layer_forwards"],
                        "cost_share_of_exact": r["layer_forwards"] / exact_forwards,
                        "spearman": spearman(m.flatten().tolist(), exact.flatten().tolist()),
                        "share_left_at_20x": left,
                        "oracle_refined_spearman": replay(m, exact, e / cost, cost, left) if left > 0 else None,
                        "shipped_rule_refined_spearman": replay(m, exact, p, cost, left) if left > 0 else None}
    return {"draw": draw, "problems": batch.n, "units": L * H, "lookahead": look,
            "attribution_spearman": spearman(attr_m.flatten().tolist(), exact.flatten().tolist()),
            "per_layer_affine_oracle_spearman": spearman(fit.flatten().tolist(), exact.flatten().tolist()),
            "rules": {name: {f"{s:.2f}": replay(attr_m, exact, p, cost, s) for s in SHARES} for name, p in rules.items()}}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--problems", type=int, default=12)
    ap.add_argument("--draws", type=int, nargs="+", default=[0, 1])
    args = ap.parse_args()
    lm = load_model(None, device="cpu", dtype="fp32")
    speed = json.loads((RESULTS / "speed.json").read_text())["scoring"]["modes"]
    # hybrid time ~ attribution + share x exact: the share that still gives 20x naive
    share_20x = (speed["naive"]["seconds"] / 20 - speed["attribution"]["seconds"]) / speed["exact"]["seconds"]
    draws = []
    for d in args.draws:
        draws.append(draw_bound(lm, args.problems, d, share_20x))
        print(json.dumps(draws[-1]), flush=True)
    rows = []
    for name in draws[0]["rules"]:
        for d in draws:
            rows.append([name, d["draw"]] + [f"{d['rules'][name][f'{s:.2f}']:.3f}" for s in SHARES])
    md = table(rows, ["refinement rule", "draw"] + [f"share {s:.2f}" for s in SHARES])
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    look_md = table([[k, d["draw"], f"{v['cost_share_of_exact']:.1%}", f"{v['spearman']:.3f}", f"{max(v['share_left_at_20x'], 0):.1%}",
                      fmt(v["shipped_rule_refined_spearman"]), fmt(v["oracle_refined_spearman"])]
                     for k in draws[0]["lookahead"] for d in draws for v in [d["lookahead"][k]]],
                    ["look-ahead k", "draw", "cost (share of exact)", "Spearman", "share left at 20x",
                     "+ shipped refinement", "+ oracle refinement"])
    print(md)
    print(look_md)
    write_result("hybrid_bound", {"problems": args.problems, "shares": list(SHARES), "draws": draws,
                                  "share_for_20x": share_20x, "share_for_20x_from": "speed.json (naive, attribution, exact seconds)",
                                  "table_md": md, "lookahead_md": look_md})


if __name__ == "__main__":
    main()
