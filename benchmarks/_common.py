"""Helpers shared by the benchmark scripts (run from the repository root)."""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    import torch

    return {"python": sys.version.split()[0], "torch": torch.__version__, "cpu_threads": torch.get_num_threads(),
            "cpus": os.cpu_count(), "platform": platform.platform(), "cuda": torch.cuda.is_available(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def command() -> str:
    """The command line that produced a result (recorded in every result file)."""
    script = Path(sys.argv[0])
    try:
        script = script.resolve().relative_to(Path(__file__).resolve().parent.parent)
    except ValueError:
        pass
    return " ".join(["python", str(script), *sys.argv[1:]])


def git_commit() -> str | None:
    import subprocess

    r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                       cwd=Path(__file__).resolve().parent)
    return r.stdout.strip() or None


def write_result(name: str, data: dict) -> Path:
    from cap_edge.io import write_json

    path = RESULTS / f"{name}.json"
    write_json(path, {"benchmark": name, "machine": machine(), "command": data.pop("command", command()),
                      "commit": git_commit(), **data})
    print(f"wrote {path}")
    return path


def table(rows: list[list], header: list[str]) -> str:
    rows = [[str(c) for c in r] for r in rows]
    w = [max(len(header[i]), *(len(r[i]) for r in rows)) for i in range(len(header))]
    out = ["| " + " | ".join(h.ljust(w[i]) for i, h in enumerate(header)) + " |",
           "|" + "|".join("-" * (x + 2) for x in w) + "|"]
    out += ["| " + " | ".join(c.ljust(w[i]) for i, c in enumerate(r)) + " |" for r in rows]
    return "\n".join(out)
