"""Dense vs magnitude / Wanda / SparseGPT / CAP / CAP-Wanda at several sparsities and 2:4, in one
run, on the embedded model and the embedded suite (calibration and evaluation disjoint).

    python benchmarks/pruning.py [--eval-per-family 20] [--calib 32]

Writes benchmarks/results/pruning.json, pruning.md (table) and pruning.png (accuracy vs sparsity).
"""

from __future__ import annotations

import argparse
import time

from _common import RESULTS, table, write_result
from cap_edge.config import PruneConfig, ScoreConfig
from cap_edge.backend import TorchBackend
from cap_edge.evaluate import evaluate
from cap_edge.models import load_model
from cap_edge.pruning import METHODS, prune_model
from cap_edge.scoring import build_calib_batch, score_heads
from cap_edge.tasks import calibration_problems, check_disjoint, load_split

SETTINGS = [("unstructured", 0.1), ("unstructured", 0.2), ("unstructured", 0.3), ("unstructured", 0.5), ("2:4", 0.5)]


def plot(results: list[dict], dense: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m in METHODS:
        pts = sorted((r["target_sparsity"], r["acc"]) for r in results if r["method"] == m and r["pattern"] == "unstructured")
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=m)
        s24 = [r for r in results if r["method"] == m and r["pattern"] == "2:4"]
        if s24:
            ax.scatter([0.5], [s24[0]["acc"]], marker="x", s=60, color=ax.lines[-1].get_color())
    ax.axhline(dense["acc"], color="k", ls="--", label=f"dense ({dense['acc']:.3f})")
    ax.axhline(dense["chance"], color="grey", ls=":", label=f"chance ({dense['chance']:.3f})")
    ax.set_xlabel("sparsity (x = 2:4)")
    ax.set_ylabel("MC accuracy (acc_norm), held-out embedded suite")
    ax.set_title(f"SmolLM2-135M pruning, n={dense['n']} problems")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--eval-per-family", type=int, default=20)
    ap.add_argument("--calib", type=int, default=32)
    args = ap.parse_args()
    lm = load_model(None, dtype="fp32")
    model, tok = lm.model, lm.tokenizer
    calib = calibration_problems("embedded", args.calib)
    ev = load_split("embedded", "eval", args.eval_per_family)
    check_disjoint(calib, ev)
    batch = build_calib_batch(tok, calib, 3, pad_id=tok.pad_token_id or 0)
    t = time.perf_counter()
    scores = score_heads(model, tok, calib, ScoreConfig())
    score_seconds = time.perf_counter() - t
    original = {k: v.clone() for k, v in model.state_dict().items()}

    def run_eval():
        r = evaluate(TorchBackend(model, tok, progress=False), tok, ev)["overall"]
        return {"acc": r["acc"], "ci95": r["ci95"], "n": r["n"], "chance": r["chance"], "answer_ce": r["answer_ce"]}

    dense = run_eval()
    print(f"dense: acc {dense['acc']:.3f} CE {dense['answer_ce']:.3f}", flush=True)
    results = []
    for pattern, sp in SETTINGS:
        for method in METHODS:
            model.load_state_dict(original)
            cfg = PruneConfig(method=method, sparsity=sp, pattern=pattern)
            rep = prune_model(model, cfg, batch, scores, progress=False)
            r = {"method": method, "pattern": pattern, "target_sparsity": cfg.target_sparsity,
                 "achieved_sparsity": rep["achieved_sparsity"], "prune_seconds": rep["seconds"], **run_eval()}
            results.append(r)
            print(f"{method:10s} {pattern:12s} {cfg.target_sparsity:.2f}: acc {r['acc']:.3f} "
                  f"[{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}] CE {r['answer_ce']:.3f} ({rep['seconds']:.1f}s)", flush=True)
    model.load_state_dict(original)
    rows = [["dense", "-", "0.00", f"{dense['acc']:.3f}", f"[{dense['ci95'][0]:.3f}, {dense['ci95'][1]:.3f}]", f"{dense['answer_ce']:.3f}", "-"]]
    rows += [[r["method"], r["pattern"], f"{r['achieved_sparsity']:.3f}", f"{r['acc']:.3f}",
              f"[{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]", f"{r['answer_ce']:.3f}", f"{r['prune_seconds']:.1f}"] for r in results]
    md = table(rows, ["method", "pattern", "sparsity", "acc_norm", "95% CI", "answer CE", "prune s"])
    print(md)
    (RESULTS / "pruning.md").write_text(
        f"Held-out embedded suite, n={dense['n']} ({args.eval_per_family} per family), chance {dense['chance']:.3f}; "
        f"calibration {batch.n} problems.\n\n{md}\n")
    plot(results, dense, RESULTS / "pruning.png")
    write_result("pruning", {"model": lm.source, "eval_problems": dense["n"], "calib_problems": batch.n,
                             "score_seconds": score_seconds, "scores_cache_hit": scores.get("cache_hit"),
                             "dense": dense, "results": results})


if __name__ == "__main__":
    main()
