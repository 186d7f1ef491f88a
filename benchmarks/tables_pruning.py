"""docs/results.md's pruning section: the per-level criteria of issue #17, which method differences
exceed the spread over calibration draws, SparseGPT's float32-vs-float64 check (used by tables.py)."""

from __future__ import annotations

from _common import beyond_spread, md_table
from pruning_compare import met


def _test(t: dict) -> str:
    if t.get("p_value") is None:
        return f"no hits stored, acc {t['acc_gap']:+.3f}"
    return f"{t['a_only']}/{t['b_only']} p={t['p_value']:.2g}"


def _verdict(criteria: dict) -> str:
    if met(criteria):
        return "yes"
    failed = [k for k, v in criteria.items() if v is False]
    open_ = [k for k, v in criteria.items() if v is None]
    return "; ".join(x for x in ("no: " + ", ".join(failed) if failed else "", "undecided: " + ", ".join(open_) if open_ else "") if x)


def _criteria_rows(levels: list[dict], label) -> list[list]:
    rows = []
    for lv in levels:
        best = lv["best_cap"] + (f" (lowest CE: {lv['lowest_ce_cap']})" if lv.get("lowest_ce_cap", lv["best_cap"]) != lv["best_cap"] else "")
        rows.append([label(lv), best, lv["best_baseline"], f"{lv['ce_gap']:+.3f}", f"{lv['ce_noise']:.3f}",
                     f"{lv['kl_ratio']:.3f}", f"{lv['kl_ratio_to_lowest_baseline_kl']:.3f}",
                     ", ".join(_test(t) for t in lv["mcnemar_per_draw"]), _verdict(lv["criteria"])])
    return rows


def _per_cap_rows(levels: list[dict], label) -> list[list]:
    return [[label(lv), j["method"], f"{j['ce_gap']:+.3f}", f"{j['kl_ratio']:.3f}",
             ", ".join(_test(t) for t in j["mcnemar_per_draw"]), _verdict(j["criteria"])]
            for lv in levels for j in lv.get("per_cap", [])]


CRIT_HEAD = ["level", "best CAP", "best of Wanda/SparseGPT", "Δ answer CE", "draw spread (sd)", "KL ratio",
             "KL ratio to the lowest baseline KL", "McNemar per draw (CAP-only/baseline-only)", "criteria met"]
PER_CAP_HEAD = ["level", "CAP method", "Δ answer CE vs best baseline", "KL ratio", "McNemar per draw", "criteria met"]


def separations(level: dict, key: str = "answer_ce") -> list[dict]:
    """Every pair of methods at one level whose ``key`` differs by more than the calibration noise:
    their ranges over the draws do not overlap (magnitude, calibration-free, is one point). Lower is
    better for answer CE and KL, higher for accuracy."""
    rows = [r for r in level["rows"] if r[key].get("values")]
    out = []
    for i, a in enumerate(rows):
        for b in rows[i + 1:]:
            lo, hi = (a, b) if a[key]["mean"] <= b[key]["mean"] else (b, a)
            out.append({"lower": lo["method"], "higher": hi["method"], "delta": hi[key]["mean"] - lo[key]["mean"],
                        "separated": beyond_spread(lo[key], hi[key])})
    return out


def noise_statement(r: dict, key: str = "answer_ce") -> str:
    """Which method differences exceed the spread over calibration draws, per level (one line each)."""
    if r["draws"] < 2:
        return "one calibration draw: no spread measured, so no difference can be called larger than the noise"
    parts = []
    for lv in r["summary"]:
        if lv.get("draws", r["draws"]) < 2:
            parts.append(f"{lv['pattern']} {lv['sparsity']:.0%}: one calibration draw at this level, no spread measured")
            continue
        pairs = separations(lv, key)
        sep = [p for p in pairs if p["separated"]]
        within = [p for p in pairs if not p["separated"]]
        parts.append(f"{lv['pattern']} {lv['sparsity']:.0%}: " + ("; ".join(f"{p['lower']} < {p['higher']} ({p['delta']:+.2f})" for p in sep)
                     or "none") + f" ({len(within)} pair{'' if len(within) == 1 else 's'} within the noise"
                     + (": " + ", ".join(f"{p['lower']}~{p['higher']}" for p in within) if within else "") + ")")
    return "\n".join(f"- {p}" for p in parts)


def precision_rows(r: dict) -> list[list]:
    return [[f"{pc['pattern']} {pc['sparsity']:.2f}", f"{pc['mask_agreement']:.4f}",
             f"{pc['answer_ce']['float64']:.3f} / {pc['answer_ce']['float32']:.3f}",
             f"{pc['acc']['float64']:.3f} / {pc['acc']['float32']:.3f}", f"{pc['kl']['float64']:.4f} / {pc['kl']['float32']:.4f}",
             f"{pc['paired']['a_only']}/{pc['paired']['b_only']} p={pc['paired']['p_value']:.2g}",
             f"{pc['ce_spread_over_draws']['range']:.3f}", "yes" if pc["within_spread"] else "no"]
            for pc in r.get("sparsegpt_precision") or []]


def pruning(r: dict) -> str:
    out = []
    if r.get("draws_requested", r["draws"]) > r["draws"]:
        out += [f"**{r['draws']} of {r['draws_requested']} requested calibration draws**: the run was stopped after the "
                "checkpoint it writes per draw" + (", so no spread over draws is measured here." if r["draws"] < 2
                                                   else f"; the spreads below are over {r['draws']} draws."), ""]
    for k in r.get("kept_from", []):
        out += [f"Levels {', '.join(k['settings'])} kept from `{k['command']}` ({k['date']}, commit {k['commit']}; same "
                "evaluation sizes); the source line above is the run that added the others.", ""]
    out += [r["table_md"], "",
           "Best CAP-family method against the best of Wanda/SparseGPT (by mean answer CE) at each level: answer-CE "
           "gap against the calibration-draw spread, KL ratios, McNemar per draw. Criteria (issue #17): Δ CE ≤ 0.02, "
           "KL ≤ 1.05 × the best baseline's, not significantly worse (p ≥ 0.05 where behind); at 50% also better CE "
           "than Wanda. The best CAP method is the lowest-CE one among those meeting every criterion, else the "
           "lowest-CE one (named beside it when they differ); runs stored before per-problem hits were kept reuse "
           "the McNemar tests their summary recorded, else the accuracy gap alone (undecided when behind).", "",
           md_table(CRIT_HEAD, _criteria_rows(r["summary"], lambda lv: f"{lv['pattern']} {lv['sparsity']:.2f}")),
           "", "Every CAP-family method against the level's best baseline:", "",
           md_table(PER_CAP_HEAD, _per_cap_rows(r["summary"] + r.get("transfer_summary", []),
                                                lambda lv: f"{lv.get('split', '')} {lv['pattern']} {lv['sparsity']:.2f}".strip()))]
    if r.get("transfer_summary"):
        out += ["", "Transfer (calibrate on one half of the families, evaluate on the other; the draws each level ran, "
                "judged on their mean and McNemar per draw):", "",
                md_table(CRIT_HEAD, _criteria_rows(r["transfer_summary"], lambda lv: f"{lv['split']} {lv['pattern']} {lv['sparsity']:.2f}"))]
    out += ["", "Differences in mean answer CE larger than the calibration noise (the two methods' ranges over "
            "the level's draws do not overlap; lower CE first):", "", noise_statement(r)]
    if r.get("sparsegpt_precision"):
        out += ["", "SparseGPT's OBS solve in float32 against float64 (draw 0, same statistics), read against the "
                "spread of float64 SparseGPT over the draws:", "",
                md_table(["level", "mask agreement", "answer CE f64 / f32", "acc f64 / f32", "KL f64 / f32",
                          "McNemar f32-only/f64-only", "CE range over draws", "Δ CE within it"], precision_rows(r))]
    times = [lv for lv in r["summary"] if lv.get("prune_time_vs_sparsegpt")]
    if times:
        out += ["", "Pruning CPU time relative to SparseGPT (process CPU seconds, mean over draws): "
                + "; ".join(f"{lv['pattern']} {lv['sparsity']:.2f}: " + ", ".join(f"{m} {v:.2f}x" for m, v in lv["prune_time_vs_sparsegpt"].items())
                            for lv in times) + "."]
    return "\n".join(out)


def n300_rows(r: dict) -> list[list]:
    rows = []
    for lv in r["levels"]:
        for run in lv["runs"]:
            c = run["stored_check"]
            check = f"{c['same']}/{c['n']} same results" if "same" in c else (
                f"same accuracy ({c['acc']:.3f})" if c["same_acc"] else f"**differs**: {c['acc']:.3f} vs stored {c['stored_acc']:.3f}")
            rows.append([f"{lv['pattern']} {lv['sparsity']:.2f}", lv.get("draw", 0), run["method"], f"{run['acc']:.3f} [{run['ci95'][0]:.3f}, {run['ci95'][1]:.3f}]",
                         f"{run['answer_ce']:.3f}", check])
        t = lv["mcnemar"]
        rows.append(["", "", f"{lv['best_cap']} vs {lv['best_baseline']}", f"{lv['acc_gap']:+.3f}",
                     f"McNemar {t['a_only']}/{t['b_only']} p={t['p_value']:.2g}", "not significantly worse: "
                     + ("yes" if lv["not_significantly_worse"] else "no")])
    return rows


def n300(r: dict) -> str:
    return ("Each level's best CAP method and best baseline (pruning.json's summary), re-pruned on a calibration draw, "
            f"knowledge accuracy on n={r['n']} ({r['knowledge']}; pruning.py's 150 and the next 150), 95% Wilson CI, paired "
            "McNemar (CAP-only/baseline-only). The last column checks the re-pruned model against the stored run on its "
            "150 problems (per problem where the run kept them, else the accuracy).\n\n"
            + md_table(["level", "draw", "method", "knowledge acc [95% CI]", "knowledge answer CE", "vs the stored run"], n300_rows(r)))


def n300_note(r: dict | None, lv: dict) -> str:
    """The README glance's n=300 accuracy test for one pruning.json level, where measured."""
    ms = [x for x in (r or {}).get("levels", []) if x["pattern"] == lv["pattern"] and abs(x["sparsity"] - lv["sparsity"]) < 1e-9
          and x["best_cap"] == lv["best_cap"]]
    if not ms:
        return ""
    per = []
    for m in ms:
        cap, base = m["runs"]
        t = m["mcnemar"]
        per.append(f"draw {m.get('draw', 0)} {cap['acc']:.3f} vs {base['acc']:.3f}, McNemar {t['a_only']}/{t['b_only']} p={t['p_value']:.2g}")
    return f"; knowledge acc n={r['n']}: {'; '.join(per)} (`pruning_n300.json`)"


def refit_speed(r: dict) -> str:
    m = r["matrices"]
    rows = [[k, f"{v['prune_seconds']:.0f}", f"{r['ratio_to_sparsegpt'].get(k, 1.0):.2f}x",
             ", ".join(f"{a} {b}" for a, b in v["obs"].items()) if v.get("obs") else "-"] for k, v in r["prunes"].items()]
    return (f"{m['matrices']} matrices of a cap-sparsegpt 2:4 prune (draw 0): refit objective's excess over 60 float64 CG steps, "
            f"median / max: default (stop {r['default_obs']['refit_tol']:g}, {r['default_obs']['refit_products']} products) "
            f"{m['excess_new']['median']:.1e} / {m['excess_new']['max']:.1e}, previous fixed 30 float64 steps "
            f"{m['excess_old']['median']:.1e} / {m['excess_old']['max']:.1e}; the default keeps at least "
            f"{m['gain_share_new_min']:.1%} of each matrix's possible gain; largest weight difference between the two "
            f"{m['max_weight_diff']['max']:.2g}; refit CPU seconds {m['refit_seconds']['new']:.0f} vs {m['refit_seconds']['old']:.0f}. "
            f"Whole 2:4 prunes side by side ({r['threads']} thread(s), process CPU seconds):\n\n"
            + md_table(["prune", "CPU s", "vs SparseGPT", "OBS solve"], rows))


def _draws(t: dict) -> str:
    n = len(t["mcnemar_per_draw"])
    return "one calibration draw" if n == 1 else f"mean of {n} calibration draws"


def transfer_rows(p: dict) -> list[list[str]]:
    """One glance row per transfer level: both directions' best CAP method against the best baseline."""
    rows = []
    for key in dict.fromkeys((t["pattern"], t["sparsity"]) for t in p["transfer_summary"]):
        ts = [t for t in p["transfer_summary"] if (t["pattern"], t["sparsity"]) == key]
        rows.append([f"transfer {key[0]} {key[1]:.0%} (calibrate on one half of the families, evaluate on the other)",
                     "; ".join(f"{t['split']}: {t['best_cap']} vs {t['best_baseline']}" for t in ts),
                     "; ".join(f"{t['split']}: answer CE {t['ce_gap']:+.3f}, KL x{t['kl_ratio']:.2f}, criteria "
                               f"{'met' if met(t['criteria']) else 'not met'} ({_draws(t)})" for t in ts),
                     "`pruning.json`"])
    return rows
