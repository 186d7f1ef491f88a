"""Where a result came from: the machine, the date, the command and the commit, recorded in every
JSON that cap-edge or a benchmark writes so each figure can be traced."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def machine() -> dict:
    import torch

    return {"python": sys.version.split()[0], "torch": torch.__version__, "cpu_threads": torch.get_num_threads(),
            "cpus": os.cpu_count(), "platform": platform.platform(), "cuda": torch.cuda.is_available(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def command(argv: list[str] | None = None) -> str:
    """The command line: ``cap-edge ...`` for the CLI, ``python path/relative/to/repo ...`` for a script."""
    argv = list(sys.argv if argv is None else argv)
    script = Path(argv[0])
    if script.name == "cap-edge":
        return " ".join(["cap-edge", *argv[1:]])
    try:
        script = script.resolve().relative_to(ROOT)
    except ValueError:
        pass
    return " ".join(["python", str(script), *argv[1:]])


def git_commit() -> str | None:
    """$CAP_EDGE_COMMIT when set (a copy of a checkout run elsewhere, e.g. on a lent GPU machine, whose
    .git, if it travels at all, need not be at the copied tree's commit: one such copy reported the
    session's first commit); else the checkout's short commit; else None (an installed package)."""
    if os.environ.get("CAP_EDGE_COMMIT"):
        return os.environ["CAP_EDGE_COMMIT"]
    try:
        r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout.strip() or None


def stamp() -> dict:
    return {"machine": machine(), "command": command(), "commit": git_commit()}
