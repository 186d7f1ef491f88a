"""Naive loop vs exact engine vs attribution vs hybrid CAP scoring, in one run, same problems.

    python benchmarks/scoring.py [--problems 12] [--refine 0.2]

Writes benchmarks/results/scoring.json: seconds per mode, speed-ups against naive, max |exact -
naive| (fp32), Spearman of attribution and hybrid against exact.
"""

from __future__ import annotations

import argparse
import time

import torch

from _common import table, write_result
from cap_edge.config import ScoreConfig
from cap_edge.models import load_model
from cap_edge.scoring import build_calib_batch, compute_scores, score_matrix, spearman
from cap_edge.tasks import calibration_problems


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--problems", type=int, default=12)
    ap.add_argument("--subsets", type=int, default=3)
    ap.add_argument("--refine", type=float, default=0.2)
    args = ap.parse_args()
    lm = load_model(None, device="auto", dtype="fp32")
    tok = lm.tokenizer
    batch = build_calib_batch(tok, calibration_problems("embedded", args.problems), args.subsets, pad_id=tok.pad_token_id or 0)
    runs = {}
    # order: cheapest first so a partial run still says something; every mode runs uncached
    for mode in ("attribution", "hybrid", "exact", "naive"):
        cfg = ScoreConfig(mode=mode, subsets=args.subsets, refine_fraction=args.refine)
        t = time.perf_counter()
        res = compute_scores(lm.model, batch, cfg, cache_key=None, progress=True)
        runs[mode] = {"seconds": time.perf_counter() - t, "layer_forwards": res["layer_forwards"],
                      "matrix": score_matrix(res)}
        print(f"{mode}: {runs[mode]['seconds']:.1f}s", flush=True)
    exact, naive = runs["exact"]["matrix"], runs["naive"]["matrix"]
    out = {"model": lm.source, "problems": batch.n, "tokens": int(batch.input_ids.numel()),
           "answer_tokens": int(batch.tokens.sum()), "subsets": args.subsets, "refine_fraction": args.refine,
           "heads": int(exact.numel()), "dtype": "fp32", "device": str(lm.device),
           "max_abs_diff_exact_vs_naive": float((exact - naive).abs().max()), "modes": {}}
    rows = []
    for mode, r in runs.items():
        rho = spearman(r["matrix"].flatten().tolist(), exact.flatten().tolist())
        speed = runs["naive"]["seconds"] / r["seconds"]
        out["modes"][mode] = {"seconds": r["seconds"], "speedup_vs_naive": speed, "spearman_vs_exact": rho,
                              "layer_forwards": r["layer_forwards"]}
        rows.append([mode, f"{r['seconds']:.1f}", f"{speed:.2f}x", f"{rho:.3f}"])
    print(table(rows, ["mode", "seconds", "speed-up vs naive", "Spearman vs exact"]))
    print(f"max |exact - naive| = {out['max_abs_diff_exact_vs_naive']:.2e}")
    write_result("scoring", out)


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
