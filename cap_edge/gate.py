"""Regression gate: compare a bench result with a stored baseline under explicit tolerances."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Tolerances:
    accuracy_points: float = 0.01  # allowed drop beyond the baseline's 95% CI half-width
    latency_frac: float = 0.10  # TTFT may grow, decode tok/s may shrink, by this fraction
    memory_frac: float = 0.05
    size_frac: float = 0.01


def compare(current: dict, baseline: dict, tol: Tolerances = Tolerances()) -> list[dict]:
    """Regressions of ``current`` against ``baseline`` (bench results keyed by artifact name).

    Each regression: artifact, metric, baseline, current, change, allowed."""
    out = []
    for name, base in baseline["artifacts"].items():
        cur = current["artifacts"].get(name)
        if cur is None:
            out.append({"artifact": name, "metric": "present", "baseline": "yes", "current": "missing", "change": "-", "allowed": "present"})
            continue

        def check(metric, b, c, worse_if_higher, allowed_frac=None, allowed_abs=None):
            if b is None or c is None:
                return
            if allowed_abs is not None:
                bad = (c - b > allowed_abs) if worse_if_higher else (b - c > allowed_abs)
                allowed = f"{'+' if worse_if_higher else '-'}{allowed_abs:.4f}"
                change = f"{c - b:+.4f}"
            else:
                bad = (c > b * (1 + allowed_frac)) if worse_if_higher else (c < b / (1 + allowed_frac))
                allowed = f"{'+' if worse_if_higher else '-'}{allowed_frac:.0%}"
                change = f"{(c / b - 1) if b else float('inf'):+.1%}"
            if bad:
                out.append({"artifact": name, "metric": metric, "baseline": b, "current": c, "change": change, "allowed": allowed})

        acc_b, acc_c = base.get("accuracy"), cur.get("accuracy")
        if acc_b and acc_c:
            half = (acc_b["ci95"][1] - acc_b["ci95"][0]) / 2
            check("accuracy", acc_b["acc"], acc_c["acc"], False, allowed_abs=half + tol.accuracy_points)
        lb, lc = base.get("latency", {}), cur.get("latency", {})
        check("ttft_s", lb.get("ttft_s"), lc.get("ttft_s"), True, tol.latency_frac)
        check("decode_tok_s", lb.get("decode_tok_s"), lc.get("decode_tok_s"), False, tol.latency_frac)
        check("peak_rss_mb", lb.get("peak_rss_mb"), lc.get("peak_rss_mb"), True, tol.memory_frac)
        check("bytes", base.get("bytes"), cur.get("bytes"), True, tol.size_frac)
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


def tolerances_dict(t: Tolerances) -> dict:
    return asdict(t)
