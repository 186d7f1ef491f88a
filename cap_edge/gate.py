"""Regression gate: compare a bench result with a stored baseline under explicit tolerances.

It refuses what it cannot judge: a result for another device, another artifact set or another set
of metrics is a ``GateMismatch`` (CLI exit 4), not a pass; a metric the baseline has and the result
lacks is a regression, not a skip; unreadable input is a ``CapEdgeError`` (exit 2)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from .errors import CapEdgeError

# metric name -> (path inside an artifact entry, worse when higher?)
METRICS = {
    "accuracy": (("accuracy", "acc"), False),
    "ttft_s": (("latency", "ttft_s"), True),
    "decode_tok_s": (("latency", "decode_tok_s"), False),
    "peak_rss_mb": (("latency", "peak_rss_mb"), True),
    "bytes": (("bytes",), True),
}


class GateMismatch(CapEdgeError):
    """The result and the baseline cannot be compared (device, artifact set or metric set differ)."""


@dataclass(frozen=True)
class Tolerances:
    accuracy_points: float = 0.01  # allowed drop beyond the baseline's 95% CI half-width
    latency_frac: float = 0.10  # TTFT may grow, decode tok/s may shrink, by this fraction
    memory_frac: float = 0.05
    size_frac: float = 0.01


def read_json_input(path: str | Path, what: str, key: str = "artifacts", expected: str = "a bench result") -> dict:
    """A bench result or baseline file (or another result holding ``key``), or CapEdgeError naming
    the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise CapEdgeError(f"{what} file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise CapEdgeError(f"{what} {path}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    except ValueError as e:
        raise CapEdgeError(f"{what} {path}: not valid JSON ({e})") from e
    if not isinstance(data, dict) or not isinstance(data.get(key), (dict, list)):
        raise CapEdgeError(f"{what} {path}: expected {expected} (an object with {key!r}), got "
                           f"{type(data).__name__}{'' if not isinstance(data, dict) else ' without ' + key}")
    return data


def _value(entry: dict, path: tuple[str, ...]):
    v = entry
    for k in path:
        if not isinstance(v, dict) or k not in v:
            return None
        v = v[k]
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _metrics(entry: dict) -> set[str]:
    return {m for m, (path, _) in METRICS.items() if _value(entry, path) is not None}


def check_comparable(current: dict, baseline: dict) -> None:
    if not baseline.get("artifacts"):
        raise GateMismatch("the baseline holds no artifacts: nothing to judge against")
    if current.get("device") != baseline.get("device"):
        raise GateMismatch(f"device differs: result {current.get('device')!r}, baseline {baseline.get('device')!r}")
    cur, base = set(current["artifacts"]), set(baseline["artifacts"])
    if cur != base:
        raise GateMismatch(f"artifact sets differ: only in the result {sorted(cur - base)}, only in the baseline {sorted(base - cur)}")
    for name in sorted(base):
        mb = _metrics(baseline["artifacts"][name])
        if not mb:
            raise GateMismatch(f"{name}: the baseline has none of the gated metrics ({', '.join(METRICS)})")
        extra = _metrics(current["artifacts"][name]) - mb
        if extra:
            raise GateMismatch(f"{name}: the result has metrics the baseline lacks: {sorted(extra)}")


def compare(current: dict, baseline: dict, tol: Tolerances = Tolerances()) -> list[dict]:
    """Regressions of ``current`` against ``baseline`` (bench results keyed by artifact name).

    Each regression: artifact, metric, baseline, current, change, allowed. Raises GateMismatch when
    the two cannot be compared."""
    check_comparable(current, baseline)
    out = []
    for name, base in baseline["artifacts"].items():
        cur = current["artifacts"][name]
        for metric, (path, worse_if_higher) in METRICS.items():
            b, c = _value(base, path), _value(cur, path)
            if b is None:
                continue
            if c is None:
                out.append({"artifact": name, "metric": metric, "baseline": b, "current": "missing", "change": "-",
                            "allowed": "present"})
                continue
            if metric == "accuracy":
                ci = base["accuracy"].get("ci95") or [b, b]
                allowed_abs = (ci[1] - ci[0]) / 2 + tol.accuracy_points
                bad = b - c > allowed_abs
                allowed, change = f"-{allowed_abs:.4f}", f"{c - b:+.4f}"
            else:
                frac = tol.latency_frac if metric in ("ttft_s", "decode_tok_s") else (
                    tol.memory_frac if metric == "peak_rss_mb" else tol.size_frac)
                bad = (c > b * (1 + frac)) if worse_if_higher else (c < b / (1 + frac))
                allowed = f"{'+' if worse_if_higher else '-'}{frac:.0%}"
                change = f"{(c / b - 1) if b else float('inf'):+.1%}"
            if bad:
                out.append({"artifact": name, "metric": metric, "baseline": b, "current": c, "change": change, "allowed": allowed})
    return out


def format_regressions(regs: list[dict]) -> str:
    if not regs:
        return "no regressions"
    head = ["artifact", "metric", "baseline", "current", "change", "allowed"]
    rows = [[str(r[h]) if not isinstance(r[h], float) else f"{r[h]:.4g}" for h in head] for r in regs]
    w = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w[i]) for i, h in enumerate(head)), "  ".join("-" * x for x in w)]
    lines += ["  ".join(c.ljust(w[i]) for i, c in enumerate(r)) for r in rows]
    return "\n".join(lines)
