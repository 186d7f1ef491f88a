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

from _common import table, write_result
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
    m = build(BuildConfig(profile=prof, out=out, overwrite=True, runs=args.runs), log_fn=lambda s: print(s, flush=True))
    report(args.device, out, m, time.perf_counter() - t)


def report(device: str, out: str, m: dict, wall: float, command_note: str | None = None) -> None:
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
        "samples": {f"{r['name']} {r['output']}": r["samples"] for r in m["candidates"]}, "table_md": md})


if __name__ == "__main__":
    main()
