"""1 vs 2 torchrun processes (gloo, CPU) for exact CAP scoring of the embedded model, same problems.

    python benchmarks/distributed.py [--samples 8]

Writes benchmarks/results/distributed.json: wall seconds each, speed-up, per-rank busy time, and
the max score difference between the two runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import write_result


def run(n: int, samples: int, out: Path, cache: Path) -> float:
    env = {**os.environ, "CAP_EDGE_CACHE": str(cache), "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // n))}
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    cmd = [torchrun, "--standalone", "--nproc-per-node", str(n), "-m", "cap_edge.cli", "score", "--distributed",
           "--samples", str(samples), "--device", "cpu", "--force", "--out", str(out)]
    t = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, start_new_session=True, cwd=Path(__file__).resolve().parent.parent)
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=8)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    model_cache = Path(os.environ.get("CAP_EDGE_CACHE", Path.home() / ".cache" / "cap-edge"))
    cache = tmp / "cache"
    (cache / "models").mkdir(parents=True)
    for d in (model_cache / "models").iterdir():  # share the converted model, not the score cache
        (cache / "models" / d.name).symlink_to(d)
    res = {}
    for n in (1, 2):
        wall = run(n, a.samples, tmp / f"out{n}", cache)
        r = json.loads((tmp / f"out{n}" / "head_scores.json").read_text())
        res[n] = {"wall_s": wall, "scoring_s": r["seconds"], "ranks": r["distributed"]["ranks"], "layers": r["layers"]}
        print(f"{n} process(es): {wall:.1f}s wall, ranks busy {[round(x['busy_s'], 1) for x in r['distributed']['ranks']]}", flush=True)
    diff = max(abs(h1["median"] - h2["median"]) for l in res[1]["layers"]
               for h1, h2 in zip(res[1]["layers"][l], res[2]["layers"][l]))
    out = {"samples": a.samples, "backend": "gloo", "cpus": os.cpu_count(),
           "one_process_s": res[1]["wall_s"], "two_processes_s": res[2]["wall_s"],
           "speedup": res[1]["wall_s"] / res[2]["wall_s"], "max_abs_score_diff": diff,
           "ranks_two_processes": res[2]["ranks"], "ranks_one_process": res[1]["ranks"]}
    print(f"speed-up {out['speedup']:.2f}x, max |score diff| {diff:.2e}")
    write_result("distributed", out)
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
