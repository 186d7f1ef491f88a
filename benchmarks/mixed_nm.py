"""Mixed dense / 2:4 (issue #17, item 3): TensorRT runs dense and 2:4 layers side by side, so a build
may keep a few blocks (a layer's attention or MLP) dense within a stated budget. Does CAP's choice
of those blocks beat a non-causal one at the same effective sparsity? One run, the same calibration
draws and evaluation as pruning.py (knowledge accuracy, suite answer CE, KL to dense, retention):

* sparsegpt and cap-sparsegpt at plain 2:4 (effective sparsity 0.50);
* with ``--dense`` of the prunable parameters kept dense (effective (1 - dense) x 0.5): SparseGPT
  and cap-sparsegpt with the earliest blocks dense (``nm_dense_by=depth``, the control), and
  cap-sparsegpt with the blocks of largest CAP effect per parameter dense (``nm_dense_by=cap``);
* paired McNemar of the CAP choice against the depth choice (same method) and against SparseGPT+depth.

Every row uses SparseGPT's own OBS solve (``PAPER_SOLVE``), also for cap-sparsegpt, whose N:M default
is now damped 0.1 with a refit on the mask (pruning.json's 2:4 rows): that pairing is not measured here.

    python benchmarks/mixed_nm.py [--draws 3] [--dense 0.1]

Writes benchmarks/results/mixed_nm.json.
"""

from __future__ import annotations

import argparse

from _common import beyond_spread, spread, table, write_result
from cap_edge.assess import EvalSet, dense_reference, paired, score_torch
from cap_edge.models import load_model
from cap_edge.tasks import check_disjoint
from pruning import calibrate, run_setting

# Both methods with SparseGPT's own solve (damping 0.01, no refit), as every stored row was measured:
# cap-sparsegpt's N:M default (damping 0.1 + refit, pruning.methods.GUIDED_OBS) is not measured here
PAPER_SOLVE = {"sparsegpt_damp": 0.01, "mask_refit_iters": 0}
ROWS = (("sparsegpt", 0.0, "cap"), ("cap-sparsegpt", 0.0, "cap"), ("sparsegpt", None, "depth"),
        ("cap-sparsegpt", None, "depth"), ("cap-sparsegpt", None, "cap"))  # (method, dense share, chosen by)


def name(method: str, dense: float, by: str) -> str:
    return f"{method} 2:4" + (f" + {dense:.0%} dense by {by}" if dense else "")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--draws", type=int, default=3)
    ap.add_argument("--dense", type=float, default=0.1, help="share of prunable parameters kept dense")
    ap.add_argument("--knowledge-per-family", type=int, default=50)
    ap.add_argument("--suite-per-family", type=int, default=10)
    ap.add_argument("--gen-per-family", type=int, default=10)
    ap.add_argument("--score-mode", default="hybrid", choices=("exact", "hybrid"))
    args = ap.parse_args()
    lm = load_model(None, device="cpu")
    original = {k: v.clone() for k, v in lm.model.state_dict().items()}
    ev = EvalSet.build(args.knowledge_per_family, args.suite_per_family, args.gen_per_family)
    ref = dense_reference(lm.model, lm.tokenizer, ev)
    dense = score_torch(lm.model, lm.tokenizer, ev, ref)
    runs = []
    for d in range(args.draws):
        cal = calibrate(lm, original, "embedded", d, args.score_mode)
        check_disjoint(cal["calib"], ev.knowledge + ev.suite + ev.gen)
        for method, share, by in ROWS:
            share = args.dense if share is None else share
            extra = {"nm_dense": share, "nm_dense_by": by} if share else {}
            extra.update(PAPER_SOLVE)
            r = run_setting(lm, original, cal, ev, ref, method, "2:4", 0.5, **extra)
            r.update(row=name(method, share, by), draw=d, dense_share=share)
            runs.append(r)
            print(f"draw {d} {r['row']:42s} eff {r['achieved_sparsity']:.3f}: acc {r['acc']:.3f} CE {r['answer_ce']:.3f} "
                  f"KL {r['kl']:.4f} ret {r['retention']:.2f}", flush=True)
    lm.model.load_state_dict(original)
    names = list(dict.fromkeys(r["row"] for r in runs))
    summary = {n: {"effective_sparsity": next(r["achieved_sparsity"] for r in runs if r["row"] == n),
                   **{k: spread([r[k] for r in runs if r["row"] == n]) for k in ("answer_ce", "acc", "kl", "retention", "ppl")}}
               for n in names}
    cap_row, depth_row, base_row = (name("cap-sparsegpt", args.dense, "cap"), name("cap-sparsegpt", args.dense, "depth"),
                                    name("sparsegpt", args.dense, "depth"))
    tests = {}
    for other in (depth_row, base_row):
        per = []
        for d in range(args.draws):
            a = next(r for r in runs if r["row"] == cap_row and r["draw"] == d)
            b = next(r for r in runs if r["row"] == other and r["draw"] == d)
            per.append({"draw": d, **paired(a, b)})
        tests[other] = {"mcnemar_per_draw": per,
                        "ce_gap": summary[cap_row]["answer_ce"]["mean"] - summary[other]["answer_ce"]["mean"],
                        "ce_beyond_spread": beyond_spread(summary[cap_row]["answer_ce"], summary[other]["answer_ce"]),
                        "kl_ratio": summary[cap_row]["kl"]["mean"] / summary[other]["kl"]["mean"]}
    rows = [["dense", "0.000", 1, f"{dense['knowledge']['acc']:.3f}", "-", f"{dense['suite']['answer_ce']:.3f}", "0", f"{ref.ppl:.1f}"]]
    rows += [[n, f"{s['effective_sparsity']:.3f}", args.draws, f"{s['acc']['mean']:.3f}", f"{s['acc']['min']:.3f}–{s['acc']['max']:.3f}",
              f"{s['answer_ce']['mean']:.3f} ± {s['answer_ce']['std']:.3f}", f"{s['kl']['mean']:.4f}", f"{s['ppl']['mean']:.1f}"]
             for n, s in summary.items()]
    md = table(rows, ["model", "effective sparsity", "draws", "acc (mean)", "acc range", "answer CE mean ± sd", "KL to dense", "ppl"])
    print(md)
    print(tests)
    write_result("mixed_nm", {"model": lm.source, "eval": ev.sizes(), "draws": args.draws, "dense": args.dense,
                              "score_mode": args.score_mode, "summary": summary, "cap_choice_vs": tests,
                              "dense_blocks": {r["row"]: r.get("dense_blocks") for r in runs if r["draw"] == 0},
                              "runs": [{k: v for k, v in r.items() if k not in ("hits", "rank")} for r in runs], "table_md": md})


if __name__ == "__main__":
    main()
