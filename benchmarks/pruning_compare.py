"""Issue #17's comparison, pure functions over pruning.py's run dicts: per level, every CAP-family
method against the best of Wanda/SparseGPT (by mean answer CE) on each criterion, and which CAP
method is reported as the level's best.

The best CAP method is the one with the lowest mean answer CE among those that meet every
criterion; when none does, the one with the lowest mean answer CE (as before this rule). Both are
recorded (``best_cap``, ``lowest_ce_cap``) with every CAP method's own criteria (``per_cap``), so a
reader sees when the two differ.

Paired McNemar tests need per-problem hits. Runs stored before hits were kept have none; for those
the test of that (method, baseline, draw) recorded in the stored summary is reused (``known``), and
where none was recorded the accuracy gap decides when the CAP method is not behind (a test cannot
call it worse) and the criterion is left unknown (None) when it is behind.
"""

from __future__ import annotations

import statistics

from cap_edge.assess import paired

BASELINES = ("wanda", "sparsegpt")  # issue #17: the best of Wanda/SparseGPT is the bar (magnitude is reported beside)
CAP_METHODS = ("cap", "cap-wanda", "cap-sparsegpt")
KL_SLACK, CE_SLACK, ALPHA = 1.05, 0.02, 0.05


def met(criteria: dict) -> bool:
    """Every criterion decided and met (None, undecided, is not met)."""
    return all(v is True for v in criteria.values())


def _mean(level: list[dict], method: str, key: str) -> float:
    return statistics.mean(r[key] for r in level if r["method"] == method)


def _paired_test(a: dict, b: dict, d: int, known: dict) -> dict:
    """McNemar of run a against run b on draw d: from their hits, else a stored test of these same two
    runs (their answer CE is the fingerprint; a test stored before fingerprints is taken as is: such
    tests belong to runs never re-measured since), else the accuracy gap alone."""
    ce = [a["answer_ce"], b["answer_ce"]]
    if a.get("hits") is not None and b.get("hits") is not None:
        return {"draw": d, **paired(a, b), "ce": ce}
    t = known.get((a["method"], b["method"], d))
    if t is not None and t.get("ce", ce) == ce:
        return {**t, "ce": ce, "reused": True}
    return {"draw": d, "acc_gap": a["acc"] - b["acc"], "p_value": None}


def _not_worse(t: dict) -> bool | None:
    if t["p_value"] is not None:
        return t["p_value"] >= ALPHA or t["a_only"] >= t["b_only"]
    return True if t["acc_gap"] >= 0 else None  # behind without a test: unknown


def judge(level: list[dict], cap: str, base: str, draws: list[int], known: dict) -> dict:
    """One CAP method against the baseline ``base`` on one level (runs of ``draws``): the CE gap,
    KL ratio and paired tests, and each criterion (True, False or None when it cannot be decided)."""
    mean = lambda m, k: _mean(level, m, k)  # noqa: E731
    run = lambda m, d: next(r for r in level if r["method"] == m and r["draw"] == d)  # noqa: E731
    tests = [_paired_test(run(cap, d), run(base, d), d, known) for d in draws]
    verdicts = [_not_worse(t) for t in tests]
    cap_ce, base_ce, cap_kl = mean(cap, "answer_ce"), mean(base, "answer_ce"), mean(cap, "kl")
    return {"method": cap, "answer_ce": cap_ce, "kl": cap_kl, "ce_gap": cap_ce - base_ce,
            "kl_ratio": cap_kl / mean(base, "kl"), "mcnemar_per_draw": tests,
            "criteria": {"ce_within_0.02": cap_ce <= base_ce + CE_SLACK, "kl_within_5pct": cap_kl <= KL_SLACK * mean(base, "kl"),
                         "not_significantly_worse": False if False in verdicts else None if None in verdicts else True}}


def compare(level: list[dict], draws: list[int], known: dict | None = None) -> dict:
    """The level's best CAP-family method (module docstring) against the best of Wanda/SparseGPT:
    CE gap against the calibration-draw spread, KL ratios, McNemar per draw, the criteria, and every
    CAP method's own judgement."""
    known = known or {}
    present = {r["method"] for r in level}
    # the draws every method has run (a checkpoint written mid-run may have some methods on fewer draws)
    draws = [d for d in draws if all(any(r["method"] == m and r["draw"] == d for r in level) for m in present)]
    level = [r for r in level if r["draw"] in draws]
    mean = lambda m, k: _mean(level, m, k)  # noqa: E731
    best_base = min((m for m in BASELINES if m in present), key=lambda m: mean(m, "answer_ce"))
    per_cap = sorted((judge(level, m, best_base, draws, known) for m in CAP_METHODS if m in present),
                     key=lambda j: j["answer_ce"])
    passing = [j for j in per_cap if met(j["criteria"])]
    best = (passing or per_cap)[0]
    sd = lambda m: statistics.stdev([r["answer_ce"] for r in level if r["method"] == m]) if len(draws) > 1 else 0.0  # noqa: E731
    lowest_kl = min(mean(m, "kl") for m in BASELINES if m in present)
    return {"best_cap": best["method"], "lowest_ce_cap": per_cap[0]["method"], "best_baseline": best_base,
            "mcnemar_per_draw": best["mcnemar_per_draw"], "ce_gap": best["ce_gap"],
            "ce_noise": max(sd(best["method"]), sd(best_base)), "kl_ratio": best["kl_ratio"],
            "kl_ratio_to_lowest_baseline_kl": best["kl"] / lowest_kl, "criteria": dict(best["criteria"]),
            "per_cap": per_cap}


def winner(lv: dict) -> str:
    """The method a profile should use at this level (issue #17: "the profile defaults use the winning
    method for their pattern"): the best CAP method when it meets every criterion, else the best
    baseline."""
    return lv["best_cap"] if met(lv["criteria"]) else lv["best_baseline"]


def level_key(lv: dict) -> tuple:
    """A level's identity across runs: (transfer split or "", pattern, sparsity rounded)."""
    return lv.get("split", ""), lv["pattern"], round(lv.get("sparsity", lv.get("target_sparsity", 0.0)), 6)


def known_tests(summaries: list[dict]) -> dict:
    """{level_key: {(CAP method, baseline, draw): McNemar test}} recorded in stored summaries, whose
    runs' hits were not kept."""
    out: dict = {}
    for lv in summaries:
        for j in lv.get("per_cap") or [{"method": lv["best_cap"], "mcnemar_per_draw": lv["mcnemar_per_draw"]}]:
            for t in j["mcnemar_per_draw"]:
                if t.get("p_value") is not None:
                    out.setdefault(level_key(lv), {})[(j["method"], lv["best_baseline"], t["draw"])] = \
                        {k: v for k, v in t.items() if k != "reused"}
    return out
