"""The build search, pure parts: which candidates a profile's grid holds, which one to ship, and
which are on the Pareto front. Rows are plain dicts so hand-made tables test the rules.

A row: name, output ("gguf:q8_0"), dense (bool), baseline (bool: a dense model at a lower
precision than the profile's outputs, for comparison), valid, acc, kl, retention, decode_tok_s,
ttft_s, mb (file size), memory_mb (estimated, weights + KV cache + 10%).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import PruneConfig, SearchConfig, TargetConfig


@dataclass(frozen=True)
class Candidate:
    name: str  # "dense", "cap-s20", "magnitude-s10", "cap-sparsegpt-2:4"
    prune: PruneConfig | None  # None: the dense model
    output: str  # FORMAT:PRECISION
    baseline: bool = False  # dense at the next lower precision: compared against, shippable only if it wins


def prune_grid(search: SearchConfig, sparse_pattern: str, base: PruneConfig) -> list[tuple[str, PruneConfig | None]]:
    """(name, prune config) of every model the search builds: dense, structured removal at each
    level by each selection rule, and N:M only where the profile's runtime exploits the pattern."""
    from ..config import replace

    out: list[tuple[str, PruneConfig | None]] = [("dense", None)]
    for level in search.levels:
        for sel in search.selection:
            out.append((f"{sel}-s{round(level * 100)}", replace(base, method=sel, pattern="structured", sparsity=level,
                                                                  refit_problems=search.refit_problems)))
    if sparse_pattern != "none":
        for m in search.nm_methods:
            out.append((f"{m}-{sparse_pattern}", replace(base, method=m, pattern=sparse_pattern)))
    return out


def candidates(search: SearchConfig, outputs: list[str], sparse_pattern: str, base: PruneConfig,
               lower: dict[str, str | None]) -> list[Candidate]:
    """Every model of the grid at every output, plus the dense model at each output's next lower
    precision (``lower``: output -> lower output or None) as a baseline."""
    out = [Candidate(name, p, o) for name, p in prune_grid(search, sparse_pattern, base) for o in outputs]
    for o in outputs:
        low = lower.get(o)
        if low and low not in outputs:
            out.append(Candidate("dense", None, low, baseline=True))
    return out


def target_failures(row: dict, targets: TargetConfig, memory_budget_mb: float, dense_acc: float | None) -> list[str]:
    """The targets ``row`` misses (empty: it meets every target)."""
    miss = []
    if not row.get("valid", False):
        miss.append("failed validation")
    if row["memory_mb"] > memory_budget_mb:
        miss.append(f"memory {row['memory_mb']:.0f} MB > budget {memory_budget_mb:.0f} MB")
    if targets.decode_tok_s_floor and row["decode_tok_s"] < targets.decode_tok_s_floor:
        miss.append(f"decode {row['decode_tok_s']:.1f} tok/s < {targets.decode_tok_s_floor:g}")
    if targets.ttft_ceiling_s and row["ttft_s"] > targets.ttft_ceiling_s:
        miss.append(f"TTFT {row['ttft_s']:.3f} s > {targets.ttft_ceiling_s:g}")
    if targets.accuracy_floor and dense_acc is not None and row["acc"] < targets.accuracy_floor * dense_acc:
        miss.append(f"accuracy {row['acc']:.3f} < {targets.accuracy_floor:g} x dense {dense_acc:.3f}")
    return miss


def pareto_front(rows: list[dict]) -> list[bool]:
    """For each row: no other valid row is at least as accurate, as fast and as small, and better in one."""
    def dominates(a, b):
        ge = a["acc"] >= b["acc"] and a["decode_tok_s"] >= b["decode_tok_s"] and a["mb"] <= b["mb"]
        gt = a["acc"] > b["acc"] or a["decode_tok_s"] > b["decode_tok_s"] or a["mb"] < b["mb"]
        return ge and gt
    return [r.get("valid", False) and not any(dominates(o, r) for o in rows if o is not r and o.get("valid", False))
            for r in rows]


def select(rows: list[dict], targets: TargetConfig, memory_budget_mb: float) -> dict:
    """Ship the most accurate row that meets every target (ties: faster, then smaller). When none
    does, the best effort: fewest missed targets, then the most accurate, and say what it misses.
    Also whether the shipped model is pruned and whether any pruned row beat every dense one."""
    if not rows:
        raise ValueError("select: no candidates")
    dense_acc = {r["output"]: r["acc"] for r in rows if r["dense"] and not r["baseline"]}
    first_dense = next(iter(dense_acc.values()), None)
    fails = [target_failures(r, targets, memory_budget_mb, dense_acc.get(r["output"], first_dense)) for r in rows]
    key = lambda i: (rows[i]["acc"], rows[i]["decode_tok_s"], -rows[i]["mb"])  # noqa: E731
    ok = [i for i, f in enumerate(fails) if not f]
    if ok:
        best, met = max(ok, key=key), True
    else:
        best, met = max(range(len(rows)), key=lambda i: (-len(fails[i]), key(i))), False
    front = pareto_front(rows)
    pruned_ok = [i for i in ok if not rows[i]["dense"]]
    dense_ok = [i for i in ok if rows[i]["dense"]]
    pruned_beats_dense = bool(pruned_ok) and (not dense_ok or max(pruned_ok, key=key) == max(ok, key=key))
    chosen = rows[best]
    if not met:
        message = (f"no candidate meets every target; best effort: {chosen['name']} {chosen['output']} "
                   f"(misses: {'; '.join(fails[best])})")
    elif chosen["dense"]:
        message = (f"no pruned candidate beats the dense model quantized the same way here: shipping dense "
                   f"{chosen['output']} (accuracy {chosen['acc']:.3f}, {chosen['decode_tok_s']:.1f} tok/s, {chosen['mb']:.0f} MB)")
    else:
        message = (f"shipping pruned {chosen['name']} {chosen['output']} (accuracy {chosen['acc']:.3f}, "
                   f"{chosen['decode_tok_s']:.1f} tok/s, {chosen['mb']:.0f} MB): it meets every target and no dense "
                   f"candidate that does is more accurate")
    return {"chosen": best, "met_targets": met, "message": message, "pareto": front, "failures": fails,
            "pruned_beats_dense": pruned_beats_dense}
