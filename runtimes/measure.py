"""Measure one artifact in a fresh process so peak resident memory is the runtime's own.

    python -m runtimes.measure RUNTIME PATH --prompt-tokens P --gen-tokens G --runs N [--options JSON]

Prints one JSON object: latency summary (runtimes.base.latency_summary) + peak_rss_mb + load_s.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

from . import load_runtime
from .base import latency_summary


def peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM belongs to the address space created at exec, so
    unlike getrusage's ru_maxrss it does not carry over the parent's peak from before the fork."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("runtime", help="a key of runtimes.RUNTIMES")
    ap.add_argument("path")
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--gen-tokens", type=int, default=32)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--options", default="{}", help="loader kwargs as JSON (providers, provider_options, n_gpu_layers...)")
    ap.add_argument("--vocab", type=int, default=1000)
    a = ap.parse_args(argv)
    t = time.perf_counter()
    rt = load_runtime(a.runtime, a.path, **json.loads(a.options))
    load_s = time.perf_counter() - t
    res = latency_summary(rt, a.prompt_tokens, a.gen_tokens, runs=a.runs, vocab=a.vocab)
    res["load_s"] = load_s
    res["peak_rss_mb"] = peak_rss_mb()
    res["runtime"] = rt.name
    res["providers"] = getattr(rt, "providers", None)
    res["label"] = rt.label
    print(json.dumps(res))


if __name__ == "__main__":
    main()
