"""Helpers shared by the benchmark scripts (run from the repository root)."""

from __future__ import annotations

import statistics
from contextlib import contextmanager
from pathlib import Path

from cap_edge.provenance import command, git_commit, machine

RESULTS = Path(__file__).resolve().parent / "results"


def write_result(name: str, data: dict) -> Path:
    from cap_edge.io import write_json

    from runtimes.llamacpp import build_info

    path = RESULTS / f"{name}.json"
    # llama.cpp's build beside the machine: a native AMX/AVX-512 build and a portable one decode at different speeds
    write_json(path, {"benchmark": name, "machine": {**machine(), "llama_cpp": build_info()},
                      "command": data.pop("command", command()),
                      "commit": git_commit(), **data})
    print(f"wrote {path}")
    return path


@contextmanager
def result_lock(name: str):
    """Held across a read-merge-write of results/NAME.json: runs side by side would otherwise lose rows."""
    import fcntl

    with open(RESULTS / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def table(rows: list[list], header: list[str]) -> str:
    rows = [[str(c) for c in r] for r in rows]
    w = [max(len(header[i]), *(len(r[i]) for r in rows)) for i in range(len(header))]
    out = ["| " + " | ".join(h.ljust(w[i]) for i, h in enumerate(header)) + " |",
           "|" + "|".join("-" * (x + 2) for x in w) + "|"]
    out += ["| " + " | ".join(c.ljust(w[i]) for i, c in enumerate(r)) + " |" for r in rows]
    return "\n".join(out)


def spread(vals: list[float]) -> dict:
    """Mean, range and standard deviation of one measure over repeated runs (calibration draws)."""
    return {"mean": statistics.mean(vals), "min": min(vals), "max": max(vals),
            "std": statistics.stdev(vals) if len(vals) > 1 else 0.0, "values": vals}


def beyond_spread(a: dict, b: dict) -> bool:
    """Two ``spread`` results differ by more than the calibration noise: their ranges do not overlap."""
    return a["max"] < b["min"] or b["max"] < a["min"]


def md_table(head: list[str], rows: list[list]) -> str:
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                     + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows])


def stored_row(rows: list[dict], method: str, pattern: str, sp: float, draw: int, split: str | None = None) -> dict | None:
    """The stored pruning.json row (``runs``: the calibration families, split None; ``transfer``: one split) of a
    method, pattern, target and draw: the last written if a file holds several, None if it holds none."""
    return next((r for r in reversed(rows) if r["method"] == method and r["pattern"] == pattern and r.get("split") == split
                 and abs(r["target_sparsity"] - sp) < 1e-9 and r["draw"] == draw), None)
