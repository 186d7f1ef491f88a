"""Accuracy of the structurally pruned models of ``benchmarks/structured.py`` on the families the
dense embedded model is clearly above chance on (opposites, animals, geography; README), where an
accuracy difference means something: on the synthetic families the dense model is at chance, so
their accuracy is noise around chance at any sparsity.

    python benchmarks/structured.py            # writes runs/structured-bench/{dense is the embedded model, cap-*, magnitude-*}
    python benchmarks/structured_accuracy.py [--eval-per-family 50]

Writes benchmarks/results/structured_accuracy.json (per model: acc_norm, 95% CI, answer CE,
per family).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _common import table, write_result
from cap_edge.evaluate import TorchBackend, evaluate
from cap_edge.models import load_model
from cap_edge.tasks import load_split

WORK = Path("runs/structured-bench")
FAMS = "opposites,animals,geography"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--eval-per-family", type=int, default=50)
    args = ap.parse_args()
    ev = load_split(f"embedded:{FAMS}", "eval", args.eval_per_family)
    names = ["dense"] + [f"{m}-{lvl}" for lvl in (10, 20, 30) for m in ("cap", "magnitude")]
    res, rows = {}, []
    for name in names:
        lm = load_model(None if name == "dense" else WORK / name, device="cpu", dtype="fp32")
        r = evaluate(TorchBackend(lm.model, lm.tokenizer, progress=False), lm.tokenizer, ev)
        o = r["overall"]
        res[name] = {"overall": o, "families": r["families"]}
        rows.append([name, f"{o['acc']:.3f} [{o['ci95'][0]:.3f}, {o['ci95'][1]:.3f}]", f"{o['answer_ce']:.3f}"]
                    + [f"{r['families'][f]['acc']:.2f}" for f in FAMS.split(",")])
        print(rows[-1], flush=True)
    md = table(rows, ["model", "acc [95% CI]", "answer CE"] + FAMS.split(","))
    print(md)
    write_result("structured_accuracy", {
        "command": f"python benchmarks/structured_accuracy.py --eval-per-family {args.eval_per_family}",
        "families": FAMS.split(","), "eval_per_family": args.eval_per_family, "n": len(ev),
        "chance": res["dense"]["overall"]["chance"], "models": res, "table_md": md})


if __name__ == "__main__":
    main()
