"""Host speed, measured side by side in one run on the same problems (issue #22):

* evaluation: the batched path (shared contexts, shared prefix, LM head only where a token is
  scored) against the sequential one, problems/s and the largest log-likelihood difference;
* CAP scoring: naive loop, exact engine, attribution and hybrid on the same calibration problems:
  seconds, speed-up against naive, max |exact - naive|, Spearman against exact;
* the README's main command (``cap-edge build --device cpu``) from a fresh cache, wall time and
  stage breakdown.

    python benchmarks/speed.py [--eval-per-family 8] [--score-problems 12] [--skip-build]

Writes benchmarks/results/speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from _common import table, write_result
from cap_edge.backend import TorchBackend
from cap_edge.config import ScoreConfig
from cap_edge.models import load_model
from cap_edge.prompts import encode_pair
from cap_edge.scoring import build_calib_batch, compute_scores, score_matrix, spearman
from cap_edge.tasks import calibration_problems, load_split

ROOT = Path(__file__).resolve().parent.parent


def eval_speed(lm, per_family: int, rounds: int = 3) -> dict:
    """Sequential vs batched on the same requests, ``rounds`` interleaved rounds (one run of each per
    round, so machine drift hits both alike); the speed-up is the median of the rounds' ratios, and
    every round is kept (on this 2-core machine one round's ratio has moved between 2.8x and 3.3x)."""
    import statistics

    probs = load_split("embedded", "eval", per_family)
    reqs = [encode_pair(lm.tokenizer, p, c) for p in probs for c in p.choices]
    be = TorchBackend(lm.model, lm.tokenizer, progress=False)
    be.loglik(reqs), be.loglik_sequential(reqs)  # warm-up: both paths at the measured shapes
    runs, diff = [], 0.0
    for _ in range(rounds):
        r = {}
        for name, fn in (("sequential", be.loglik_sequential), ("batched", be.loglik)):
            t = time.perf_counter()
            ll = fn(reqs)
            r[name] = {"seconds": time.perf_counter() - t, "ll": ll}
        diff = max(diff, max(abs(a - b) for a, b in zip(r["batched"]["ll"], r["sequential"]["ll"])))
        runs.append({k: v["seconds"] for k, v in r.items()})
    ratios = [x["sequential"] / x["batched"] for x in runs]
    med = lambda k: statistics.median(x[k] for x in runs)  # noqa: E731
    return {"problems": len(probs), "requests": len(reqs), "rounds": runs, "round_speedups": ratios,
            "sequential_problems_per_s": len(probs) / med("sequential"), "batched_problems_per_s": len(probs) / med("batched"),
            "speedup": statistics.median(ratios), "max_abs_loglik_diff": diff}


def scoring_speed(lm, n: int, refine: float) -> dict:
    tok = lm.tokenizer
    batch = build_calib_batch(tok, calibration_problems("embedded", n), 3, pad_id=tok.pad_token_id)
    runs = {}
    for mode in ("attribution", "hybrid", "exact", "naive"):  # cheapest first, every mode uncached
        t = time.perf_counter()
        res = compute_scores(lm.model, batch, ScoreConfig(mode=mode, refine_fraction=refine), progress=False)
        runs[mode] = {"seconds": time.perf_counter() - t, "layer_forwards": res["layer_forwards"], "m": score_matrix(res),
                      "refined": res.get("refined_units"), "refined_cost_share": res.get("refined_cost_share")}
        print(f"scoring {mode}: {runs[mode]['seconds']:.1f}s", flush=True)
    exact, naive = runs["exact"]["m"], runs["naive"]["m"]
    return {"problems": batch.n, "heads": int(exact.numel()), "refine_fraction": refine,
            "max_abs_diff_exact_vs_naive": float((exact - naive).abs().max()),
            "modes": {m: {"seconds": r["seconds"], "speedup_vs_naive": runs["naive"]["seconds"] / r["seconds"],
                          "spearman_vs_exact": spearman(r["m"].flatten().tolist(), exact.flatten().tolist()),
                          "layer_forwards": r["layer_forwards"], "refined": r["refined"],
                          "refined_cost_share": r["refined_cost_share"]} for m, r in runs.items()}}


def readme_build() -> dict:
    """`cap-edge build --device cpu` as the README runs it, from an empty cache (model conversion included)."""
    import shutil

    out = ROOT / "runs" / "readme-build"  # kept: benchmarks/pareto.py --from-build and cap-edge bench read it
    shutil.rmtree(out, ignore_errors=True)
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "CAP_EDGE_CACHE": str(Path(tmp) / "cache")}
        cmd = [sys.executable, "-m", "cap_edge.cli", "build", "--device", "cpu", "--out", str(out)]
        t = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            raise SystemExit(f"the README build failed: {proc.stderr[-2000:]}")
        m = json.loads((out / "manifest.json").read_text())
    return {"command": "cap-edge build --device cpu --out runs/readme-build (fresh cache)", "wall_seconds": wall,
            "stages": {k: round(v["seconds"], 1) for k, v in m["stages"].items()}, "selection": m["selection"],
            "scoring_mode": m["plan"]["scoring"]["mode"], "candidates": len(m["candidates"])}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--eval-per-family", type=int, default=8)
    ap.add_argument("--score-problems", type=int, default=12)
    ap.add_argument("--refine", type=float, default=ScoreConfig().refine_fraction)
    ap.add_argument("--skip-build", action="store_true", help="keep the stored README build (its date and command) beside the new rest")
    ap.add_argument("--only-build", action="store_true", help="re-measure the README build only (kept beside the stored rest)")
    args = ap.parse_args()
    torch.manual_seed(0)
    if args.only_build:
        from _common import RESULTS

        old = json.loads((RESULTS / "speed.json").read_text())
        build = readme_build()
        print(build, flush=True)
        write_result("speed", {k: v for k, v in old.items() if k not in ("benchmark", "machine", "command", "commit")}
                     | {"readme_build": build, "readme_build_command": " ".join(["python", "benchmarks/speed.py", "--only-build"]),
                        "readme_build_date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                        "rest_measured": {k: old[k] for k in ("machine", "command", "commit")},
                        "previous_readme_builds": old.get("previous_readme_builds", []) + [old["readme_build"]]})
        return
    lm = load_model(None, device="cpu")
    ev = eval_speed(lm, args.eval_per_family)
    print(ev, flush=True)
    sc = scoring_speed(lm, args.score_problems, args.refine)
    rows = [[m, f"{r['seconds']:.1f}", f"{r['speedup_vs_naive']:.2f}x", f"{r['spearman_vs_exact']:.3f}", r["layer_forwards"]]
            for m, r in sc["modes"].items()]
    md = table(rows, ["mode", "seconds", "speed-up vs naive", "Spearman vs exact", "layer-forwards"])
    print(md)
    if args.skip_build:
        from _common import RESULTS

        old = json.loads((RESULTS / "speed.json").read_text())
        kept = {k: old[k] for k in ("readme_build", "readme_build_command", "readme_build_date", "previous_readme_builds")
                if k in old}
        if "readme_build_command" not in kept:  # the build was measured in the same run as the rest
            kept |= {"readme_build_command": old["command"], "readme_build_date": old["machine"]["date"]}
        write_result("speed", {"evaluation": ev, "scoring": sc, "scoring_md": md, **kept,
                               "previous_rest": old.get("previous_rest", []) + [{"evaluation": old["evaluation"],
                                                                                 "scoring_md": old["scoring_md"],
                                                                                 **old.get("rest_measured", {k: old[k] for k in ("machine", "command", "commit")})}]})
        return
    build = readme_build()
    print(build, flush=True)
    write_result("speed", {"evaluation": ev, "scoring": sc, "scoring_md": md, "readme_build": build})


if __name__ == "__main__":
    main()
