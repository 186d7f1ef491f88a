"""The build search on the embedded model with the full grid of issue #16: structured removal of
0/10/20/30% by CAP and by magnitude selection (and 2:4 by SparseGPT and CAP-SparseGPT where the
device's runtime exploits it), every model at the profile's outputs beside dense at the next
lower precision; each candidate through its runtime (accuracy with CI, answer CE, KL, retention)
and the clock (host-measured, plus the roofline for a device that is not the host).

    python benchmarks/pareto.py --device cpu          # -> benchmarks/results/pareto_cpu.json
    python benchmarks/pareto.py --device jetson-orin  # -> benchmarks/results/pareto_jetson.json
    python benchmarks/pareto.py --device cpu --from-build runs/readme-build   # tabulate a finished build

The build directory (runs/pareto-DEVICE) holds every artifact, report.md and candidates.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

from _common import spread, table, write_result
from cap_edge.config import BuildConfig, replace
from cap_edge.deploy.build import build
from device_profiles import load_profile

RESULT = {"cpu": "pareto_cpu", "jetson-orin": "pareto_jetson"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu", choices=sorted(RESULT))
    ap.add_argument("--levels", nargs="+", type=float, default=[0.1, 0.2, 0.3])
    ap.add_argument("--selection", nargs="+", default=["cap", "magnitude"])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--draws", type=int, default=1, help="repeat the build over this many calibration draws (issue #23): "
                    "the table is draw 0's; every candidate's accuracy, answer CE, KL and retention get mean and range, "
                    "and each draw's shipped choice is recorded")
    ap.add_argument("--from-build", help="a finished build of this device (e.g. the README build that speed.py keeps "
                    "in runs/readme-build): tabulate its search, with the profile's own grid, instead of building")
    args = ap.parse_args()
    if args.from_build:
        import json
        from pathlib import Path

        m = json.loads((Path(args.from_build) / "manifest.json").read_text())
        if m["device"] != args.device or m["status"] != "complete":
            raise SystemExit(f"{args.from_build}: expected a complete {args.device} build, got {m['device']} {m['status']}")
        return report(args.device, args.from_build, m, sum(v["seconds"] for v in m["stages"].values()),
                      command_note=f"tabulates the build in {args.from_build} (its profile's grid, run {m.get('plan', {}).get('out')})")
    prof = load_profile(args.device)
    search = replace(prof.search, enabled=True, levels=tuple(args.levels), selection=tuple(args.selection))
    prof = dataclasses.replace(prof, search=search)
    out = f"runs/pareto-{args.device}"
    t = time.perf_counter()
    manifests = []
    for d in range(args.draws):
        print(f"== calibration draw {d}", flush=True)
        manifests.append(build(BuildConfig(profile=prof, out=out if d == 0 else f"{out}-draw{d}", overwrite=True,
                                           runs=args.runs, calib_draw=d), log_fn=lambda s: print(s, flush=True)))
    report(args.device, out, manifests[0], time.perf_counter() - t, draws=over_draws(manifests) if args.draws > 1 else None)


def over_draws(manifests: list[dict]) -> dict:
    """Each candidate's measures over the calibration draws (mean, min, max), and what each draw shipped.
    A difference between two candidates is larger than the calibration noise when their ranges do not overlap."""
    keys = ("acc", "answer_ce", "kl", "retention")
    rows = {}
    for m in manifests:
        for r in m["candidates"]:
            row = rows.setdefault((r["name"], r["output"]), {"name": r["name"], "output": r["output"], **{k: [] for k in keys}})
            for k in keys:
                row[k].append(r[k])
    summary = [{**{k: v for k, v in row.items() if k not in keys}, **{k: spread(row[k]) for k in keys}} for row in rows.values()]
    shipped = [{o: s["shipped"] for o, s in m["selection"].items()} for m in manifests]
    return {"draws": len(manifests), "candidates": summary, "shipped_per_draw": shipped,
            "same_choice_every_draw": all(s == shipped[0] for s in shipped)}


def report(device: str, out: str, m: dict, wall: float, command_note: str | None = None, draws: dict | None = None) -> None:
    rows = []
    for r in m["candidates"]:
        front = any(r["pareto"].values())
        rows.append([r["name"] + (" (baseline)" if r["baseline"] else ""), r["output"], "yes" if r["valid"] else "NO",
                     f"{r['acc']:.3f} [{r['acc_ci'][0]:.3f}, {r['acc_ci'][1]:.3f}]", f"{r['answer_ce']:.2f}", f"{r['kl']:.4f}",
                     f"{r['retention']:.2f}", f"{r['host']['decode_tok_s']:.1f}", f"{r['host']['ttft_s']:.3f}",
                     f"{r['host']['peak_rss_mb']:.0f}", f"{r['estimated']['decode_tok_s_max']:.0f}", f"{r['mb']:.1f}",
                     "★" if front else ""])
    md = table(rows, ["candidate", "output", "valid", "accuracy [95% CI]", "answer CE", "KL to dense", "retention",
                      "decode tok/s (host)", "TTFT s (host)", "peak RSS MB (host)", "decode tok/s ≤ (estimated)", "MB", "Pareto"])
    print(md)
    for o, s in m["selection"].items():
        print(f"{o}: {s['message']}")
    write_result(RESULT[device], {
        **({"command_note": command_note} if command_note else {}), "device": device, "build_dir": out, "wall_seconds": wall, "stages": m["stages"], "plan": m["plan"],
        "reference": m["reference"], "selection": m["selection"],
        "candidates": [{k: v for k, v in r.items() if k not in ("entry", "samples")} for r in m["candidates"]],
        "samples": {f"{r['name']} {r['output']}": r["samples"] for r in m["candidates"]}, "table_md": md,
        **({"over_draws": draws, "over_draws_md": draws_table(draws)} if draws else {})})


def draws_table(d: dict) -> str:
    rows = [[c["name"], c["output"]] + [f"{c[k]['mean']:.3f} ({c[k]['min']:.3f}–{c[k]['max']:.3f})"
                                        for k in ("acc", "answer_ce", "kl", "retention")] for c in d["candidates"]]
    shipped = "; ".join(f"draw {i}: " + ", ".join(f"{o} → {v}" for o, v in s.items()) for i, s in enumerate(d["shipped_per_draw"]))
    return (table(rows, ["candidate", "output", "accuracy mean (range)", "answer CE", "KL to dense", "retention"])
            + f"\n\nShipped per calibration draw: {shipped} (same choice every draw: "
              f"{'yes' if d['same_choice_every_draw'] else 'no'}).")


if __name__ == "__main__":
    main()
