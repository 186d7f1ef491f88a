"""Every pruning method at 10/20/30/50% unstructured and 2:4, on the embedded model, repeated over
calibration draws (disjoint subsets of the calibration split), in one run with the same evaluation
for every row: accuracy on the families where the dense model is above chance (n = 3 x
--knowledge-per-family), answer CE over the whole suite, KL to the dense model, generation
retention, perplexity; paired McNemar tests; a transfer check (calibrate on one half of the
families, evaluate on the other, both directions; calibration draw 0, or --transfer-draws, judged on their
mean as the calibration families' draws are); per-layer rank of the calibration statistics.

    python benchmarks/pruning.py [--draws 3] [--knowledge-per-family 100]

Writes benchmarks/results/pruning.json and pruning.md.
"""

from __future__ import annotations

import argparse
import time

import torch

from _common import RESULTS, result_lock, spread, table, write_result
from pruning_compare import BASELINES, CAP_METHODS, compare, known_tests, level_key
from cap_edge.assess import EvalSet, dense_reference, paired, score_torch
from cap_edge.config import BudgetConfig, PruneConfig, ScoreConfig
from cap_edge.models import load_model
from cap_edge.provenance import git_commit
from cap_edge.pruning import prune_model
from cap_edge.pruning.methods import get_method, needs_cap_scores
from cap_edge.scoring import build_calib_batch, score_channels, score_heads
from cap_edge.tasks import calibration_problems, check_disjoint

METHODS = ("magnitude", "wanda", "sparsegpt", "cap", "cap-wanda", "cap-sparsegpt")
CALIBRATION_FREE = ("magnitude",)  # the same model on every draw: run once
TRANSFER_METHODS = ("wanda", "sparsegpt", "cap-wanda", "cap-sparsegpt")
SETTINGS = [("unstructured", 0.1), ("unstructured", 0.2), ("unstructured", 0.3), ("unstructured", 0.5), ("2:4", 0.5)]
# transfer: two halves of the families, each with knowledge families the dense model is above chance on
HALF_A = "embedded:geography,arithmetic,boolean,comparison,dates,ordering"
HALF_B = "embedded:animals,opposites,parity,routine,sequences,sizes,tracking"
KNOW_A, KNOW_B = "embedded:geography", "embedded:animals,opposites"
SPLITS = {"A->B": (HALF_A, KNOW_B, HALF_B), "B->A": (HALF_B, KNOW_A, HALF_A)}  # calibration, evaluated knowledge, suite
TRANSFER_KNOWLEDGE = {"A->B": 100, "B->A": 150}  # evaluated knowledge problems per family (geography's pool holds more)


def calibrate(lm, original: dict, spec: str, draw: int, mode: str = "exact", n_scores: int = 32, scores: bool = True):
    """Scores (``n_scores`` problems, ``mode``), channel scores, and the 128-problem statistics batch of one draw,
    all of the dense model: its weights (``original``) are restored first, since a run prunes in place
    and a draw or split calibrated after an earlier prune would otherwise score that pruned model.
    ``scores=False`` (no run of the draw reads them: ``needs_cap_scores``) skips the CAP scoring: heads,
    channels and score_seconds are None."""
    lm.model.load_state_dict(original)
    tok = lm.tokenizer
    calib = calibration_problems(spec, n_scores, draw=draw)
    stats = calibration_problems(spec, PruneConfig().stats_problems, draw=draw)
    heads = chans = seconds = None
    if scores:
        t = time.perf_counter()
        heads = score_heads(lm.model, tok, calib, ScoreConfig(mode=mode), BudgetConfig(problems=len(calib)))
        chans = score_channels(lm.model, tok, calib, ScoreConfig(mode=mode), BudgetConfig(problems=len(calib)))
        seconds = time.perf_counter() - t
    batch = build_calib_batch(tok, stats, 3, BudgetConfig(problems=len(stats)), pad_id=tok.pad_token_id)
    return {"calib": calib + stats, "heads": heads, "chans": chans, "batch": batch, "score_seconds": seconds}


def scored(settings, methods) -> bool:
    """Whether any (pattern, sparsity) x method run reads CAP scores (``needs_cap_scores``)."""
    return any(needs_cap_scores(PruneConfig(method=m, sparsity=sp, pattern=pattern)) for pattern, sp in settings for m in methods)


def prune_timed(lm, original, cal, cfg: PruneConfig) -> tuple[dict, float]:
    """Prune the dense model (restored from ``original``) with one draw's calibration: (report, CPU seconds)."""
    lm.model.load_state_dict(original)
    cpu = time.process_time()  # CPU seconds: this run shares the host with other benchmarks (wall time would count them)
    rep = prune_model(lm.model, cfg, cal["batch"], cal["heads"], progress=False, channel_scores=cal["chans"])
    return rep, time.process_time() - cpu


def run_setting(lm, original, cal, ev, ref, method, pattern, sp, **extra) -> dict:
    cfg = PruneConfig(method=method, sparsity=sp, pattern=pattern, **extra)
    rep, cpu = prune_timed(lm, original, cal, cfg)
    s = score_torch(lm.model, lm.tokenizer, ev, ref)
    ranks = (rep.get("calibration_statistics") or {}).get("rank") or []
    return {"method": method, "pattern": pattern, "target_sparsity": cfg.target_sparsity, "commit": git_commit(),
            "guidance_ramp": cfg.guidance_ramp if get_method(method).guided else None, "obs": rep.get("obs"),
            "guidance_power": cfg.knob("guidance_power") if get_method(method).guided else None,
            "guidance": rep.get("guidance"),  # resolved (scale, bound, unit strength, token beta, allocation signal)
            "achieved_sparsity": rep["achieved_sparsity"], "prune_seconds": cpu, "prune_wall_seconds": rep["seconds"],
            "acc": s["knowledge"]["acc"], "ci95": s["knowledge"]["ci95"], "n": s["knowledge"]["n"],
            "answer_ce": s["suite"]["answer_ce"], "suite_acc": s["suite"]["acc"], "kl": s["fidelity"]["kl_mean"],
            "kl_p99": s["fidelity"]["kl_p99"], "top1": s["fidelity"]["top1_agreement"], "ppl": s["fidelity"]["ppl"],
            "retention": s["fidelity"]["retention"]["share"], "hits": s["hits"],
            "allocation": rep.get("allocation"), "dense_blocks": rep.get("dense_blocks"),
            "rank_deficient_inputs": sum(not v["full_rank"] for r in ranks for v in r.values()) if ranks else None,
            "rank": [{k: v["rank"] for k, v in r.items()} for r in ranks] if ranks else None}


def zero_masks(model) -> dict:
    """Where the decoder's linear weights are exactly zero (the pruning masks): {module name: bool tensor}."""
    return {n: m.weight == 0 for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in n}


def mask_agreement(a: dict, b: dict) -> float:
    """Share of weights whose pruned/kept state is the same in two ``zero_masks`` of one model."""
    return sum(int((a[n] == b[n]).sum()) for n in a) / sum(m.numel() for m in a.values())


def precision_check(lm, original, cal, ev, ref, pattern, sp, ref_row, ref_masks) -> dict:
    """SparseGPT with a float32 OBS solve against the float64 run of the same draw (issue #23): mask
    agreement and the change in the evaluation, to be read against the spread over calibration draws."""
    r = run_setting(lm, original, cal, ev, ref, "sparsegpt", pattern, sp, sparsegpt_dtype="float32")
    return {"pattern": pattern, "sparsity": r["target_sparsity"], "draw": ref_row["draw"],
            "mask_agreement": mask_agreement(zero_masks(lm.model), ref_masks),
            "answer_ce": {"float64": ref_row["answer_ce"], "float32": r["answer_ce"]},
            "acc": {"float64": ref_row["acc"], "float32": r["acc"]}, "kl": {"float64": ref_row["kl"], "float32": r["kl"]},
            "paired": paired(r, ref_row), "prune_seconds": {"float64": ref_row["prune_seconds"], "float32": r["prune_seconds"]}}


def parse_setting(text: str) -> tuple[str, float]:
    """A command-line setting: "2:4" (N:M, sparsity 0.5) or an unstructured sparsity such as "0.5"."""
    return (text, 0.5) if ":" in text else ("unstructured", float(text))


def summarise(runs: list[dict], known: dict) -> list[dict]:
    """Per (pattern, sparsity, method): mean and spread over the draws run at that level; the
    comparison of compare() (``known``: stored McNemar tests per level, for runs without hits)."""
    out = []
    for pattern, sp in SETTINGS:
        target = 0.5 if pattern == "2:4" else sp
        level = [r for r in runs if r["pattern"] == pattern and abs(r["target_sparsity"] - target) < 1e-9]
        if not level:  # a setting this run did not include (--settings)
            continue
        rows = {}
        for m in METHODS:
            rs = [r for r in level if r["method"] == m]
            if rs:
                rows[m] = {"method": m, "pattern": pattern, "sparsity": rs[0]["target_sparsity"], "draws": len(rs),
                           "calibration_free": m in CALIBRATION_FREE,
                           **{k: spread([r[k] for r in rs]) for k in ("answer_ce", "acc", "kl", "retention", "ppl", "prune_seconds")}}
        calibrated = [r for r in level if r["method"] not in CALIBRATION_FREE]
        cmp = compare(calibrated, sorted({r["draw"] for r in calibrated}), known.get(level_key({"pattern": pattern, "sparsity": target})))
        for r in rows.values():
            r["best_cap"], r["best_baseline"] = cmp["best_cap"], cmp["best_baseline"]
        if pattern == "unstructured" and sp == 0.5:  # issue #17: the paper's failure point
            cmp["criteria"]["beats_wanda_ce"] = rows[cmp["best_cap"]]["answer_ce"]["mean"] < rows["wanda"]["answer_ce"]["mean"]
        if "sparsegpt" in rows:
            cmp["prune_time_vs_sparsegpt"] = {m: r["prune_seconds"]["mean"] / rows["sparsegpt"]["prune_seconds"]["mean"]
                                              for m, r in rows.items() if m.startswith("cap-")}
        out.append({"pattern": pattern, "sparsity": target, "draws": len({r["draw"] for r in calibrated}),
                    "rows": list(rows.values()), **cmp})
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--draws", type=int, default=3)
    # prune_seconds below are process CPU seconds (all threads), so pausing or sharing the host does not change them
    ap.add_argument("--knowledge-per-family", type=int, default=100)
    ap.add_argument("--suite-per-family", type=int, default=10)
    ap.add_argument("--gen-per-family", type=int, default=20)
    ap.add_argument("--settings", nargs="*", default=[f"{sp}" if p == "unstructured" else p for p, sp in SETTINGS],
                    help="unstructured sparsities and/or N:M patterns, e.g. 0.5 2:4")
    ap.add_argument("--transfer-settings", nargs="*", default=["0.3", "0.5", "2:4"])
    ap.add_argument("--score-mode", default="exact", choices=("exact", "hybrid"), help="head scoring (hybrid: the host CPU profiles' mode)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS,
                    help="re-run only these (with --keep-stored the stored runs of the others are kept)")
    ap.add_argument("--transfer-methods", nargs="*", default=list(TRANSFER_METHODS))
    ap.add_argument("--transfer-draws", nargs="+", type=int, default=[0],
                    help="calibration draws of the transfer rows (judged on their mean, as the calibration families' draws)")
    ap.add_argument("--transfer-splits", nargs="+", default=list(SPLITS), choices=SPLITS,
                    help="run only these transfer directions (two runs with --keep-stored can take one each side by side)")
    ap.add_argument("--no-precision-check", action="store_true", help="skip SparseGPT float32 vs float64 on draw 0")
    ap.add_argument("--keep-stored", action="store_true",
                    help="keep the stored pruning.json's runs (and transfer rows) of the settings this run does not include, "
                         "read when this run writes; the evaluation sizes must match")
    ap.add_argument("--first-draw", type=int, default=0,
                    help="run draws first-draw .. first-draw + draws - 1; with --keep-stored the stored other draws of "
                         "this run's settings are kept beside them")
    args = ap.parse_args()
    settings = [parse_setting(st) for st in args.settings]
    lm = load_model(None, device="cpu")
    original = {k: v.clone() for k, v in lm.model.state_dict().items()}
    ev = EvalSet.build(args.knowledge_per_family, args.suite_per_family, args.gen_per_family)
    if args.keep_stored:
        print(f"keeping {len(load_stored(args, ev)['runs'])} stored runs", flush=True)  # fails early on other eval sizes
    ref = dense_reference(lm.model, lm.tokenizer, ev)
    dense = score_torch(lm.model, lm.tokenizer, ev, ref)
    print(f"dense: acc {dense['knowledge']['acc']:.3f} CE {dense['suite']['answer_ce']:.3f} ppl {ref.ppl:.2f}", flush=True)
    runs, scoring, precision = [], [], []
    draws = range(args.first_draw, args.first_draw + args.draws)
    for d in draws:
        cal = calibrate(lm, original, "embedded", d, args.score_mode, scores=scored(settings, args.methods))
        check_disjoint(cal["calib"], ev.knowledge + ev.suite + ev.gen)
        if cal["score_seconds"] is not None:  # else the stored draw's scoring time stays (--keep-stored)
            scoring.append({"draw": d, "seconds": cal["score_seconds"]})
        for pattern, sp in settings:
            for m in args.methods:
                if m in CALIBRATION_FREE and d > 0:
                    continue
                r = {**run_setting(lm, original, cal, ev, ref, m, pattern, sp), "draw": d}
                runs.append(r)
                print(f"draw {d} {m:14s} {pattern:12s} {r['target_sparsity']:.2f}: acc {r['acc']:.3f} CE {r['answer_ce']:.3f} "
                      f"KL {r['kl']:.4f} ret {r['retention']:.2f} ({r['prune_seconds']:.0f}s)", flush=True)
                if m == "sparsegpt" and d == 0 and not args.no_precision_check:
                    pc = precision_check(lm, original, cal, ev, ref, pattern, sp, r, zero_masks(lm.model))
                    precision.append(pc)
                    print(f"draw 0 sparsegpt float32 vs float64 {pattern} {sp}: masks agree {pc['mask_agreement']:.4f}, "
                          f"CE {pc['answer_ce']['float32']:.3f} vs {pc['answer_ce']['float64']:.3f}", flush=True)
        if d + 1 < draws.stop:  # a complete, smaller result after every draw: a stopped run still leaves one
            write(args, lm, ev, ref, dense, runs, scoring, [], precision)
    transfer = []
    need = scored([parse_setting(st) for st in args.transfer_settings], args.transfer_methods)  # same for every split and draw
    splits = [(c, k, e, name) for name, (c, k, e) in SPLITS.items() if name in args.transfer_splits and args.transfer_settings]
    for calib_spec, know, suite_spec, name in splits:
        # the evaluation half's knowledge families (geography's pool holds 168 held-out problems, animals' 149)
        tev = EvalSet.build(TRANSFER_KNOWLEDGE[name], args.suite_per_family, args.gen_per_family, knowledge=know,
                            suite=suite_spec, gen=know)
        tref = None
        for d in args.transfer_draws:
            cal = calibrate(lm, original, calib_spec, d, args.score_mode, scores=need)  # restores the dense weights, so the reference is dense
            tref = tref or dense_reference(lm.model, lm.tokenizer, tev)
            for setting in args.transfer_settings:
                pattern, sp = parse_setting(setting)
                for m in args.transfer_methods:
                    r = {**run_setting(lm, original, cal, tev, tref, m, pattern, sp), "split": name, "draw": d}
                    transfer.append(r)
                    print(f"transfer {name} draw {d} {m:14s} {setting}: acc {r['acc']:.3f} CE {r['answer_ce']:.3f} "
                          f"KL {r['kl']:.4f}", flush=True)
    lm.model.load_state_dict(original)
    write(args, lm, ev, ref, dense, runs, scoring, transfer, precision)


def load_stored(args, ev) -> dict:
    """What --keep-stored keeps of the stored pruning.json, read when this run writes (so two runs of
    different settings, one after the other or side by side, both end up in it): the runs of other
    settings, and of this run's settings the draws it does not run and the methods it does not
    run; the transfer rows of other transfer settings and of the methods and splits it does not run there; the
    McNemar tests of stored summaries (runs stored before hits were kept)."""
    empty = {"runs": [], "transfer": [], "precision": [], "settings": [], "scoring": [], "known": {}, "kept_from": [],
             "transfer_settings": []}
    if not args.keep_stored:
        return empty
    import json

    old = json.loads((RESULTS / "pruning.json").read_text())
    if old["eval"] != ev.sizes():
        raise SystemExit(f"--keep-stored: the stored evaluation is {old['eval']}, this run's {ev.sizes()}; use the same sizes")
    mine = {parse_setting(st) for st in args.settings}  # (pattern, sparsity); parse_setting gives N:M its 0.5
    theirs = {parse_setting(st) for st in args.transfer_settings}  # transfer levels this run measures again

    def kept(r: dict) -> bool:
        ran = args.first_draw <= r["draw"] < args.first_draw + args.draws  # so runs of draw 1 and draw 2 can go side by side
        return (r["pattern"], r["target_sparsity"]) not in mine or not ran or r["method"] not in args.methods

    runs = [unpacked(r) for r in old["runs"] if kept(r)]
    levels = {(r["pattern"], r["target_sparsity"]) for r in runs}
    credited = {x for k in old.get("kept_from", []) for x in k["settings"]}
    own = [st for st in old["settings"] if st not in credited and parse_setting(st) in levels]
    return {"runs": runs,
            "transfer": [unpacked(r) for r in old["transfer"] if (r["pattern"], r["target_sparsity"]) not in theirs
                         or r["method"] not in args.transfer_methods or r["split"] not in args.transfer_splits
                         or r.get("draw", 0) not in args.transfer_draws],
            "precision": [pc for pc in old["sparsegpt_precision"] if (pc["pattern"], pc["sparsity"]) not in mine
                          or args.first_draw > 0 or args.no_precision_check or "sparsegpt" not in args.methods],
            "settings": [st for st in old["settings"] if parse_setting(st) in levels],
            "scoring": old["scoring"], "known": known_tests(old["summary"] + old["transfer_summary"]),
            "transfer_settings": old.get("transfer_settings", []),
            "kept_from": [{**k, "settings": [st for st in k["settings"] if parse_setting(st) in levels]}
                          for k in old.get("kept_from", []) if any(parse_setting(st) in levels for st in k["settings"])]
                         + ([{"settings": own, "command": old["command"], "commit": old["commit"],
                              "date": old["machine"]["date"]}] if own else [])}


def write(args, lm, ev, ref, dense, runs: list[dict], scoring: list[dict], transfer: list[dict], precision: list[dict]) -> None:
    with result_lock("pruning"):  # runs side by side merge into one file
        _write(args, lm, ev, ref, dense, runs, scoring, transfer, precision)


def _write(args, lm, ev, ref, dense, runs: list[dict], scoring: list[dict], transfer: list[dict], precision: list[dict]) -> None:
    stored = load_stored(args, ev)
    order = {setting: i for i, setting in enumerate(SETTINGS)}  # (pattern, sparsity), N:M at 0.5
    runs, transfer, precision = stored["runs"] + runs, stored["transfer"] + transfer, stored["precision"] + precision
    summary = sorted(summarise(runs, stored["known"]), key=lambda lv: order[(lv["pattern"], lv["sparsity"])])
    settings = list(dict.fromkeys(stored["settings"] + args.settings))
    transfer_settings = sorted(dict.fromkeys(stored["transfer_settings"] + args.transfer_settings),
                               key=lambda st: order.get(parse_setting(st), len(order)))
    scoring = sorted({s["draw"]: s for s in stored["scoring"] + scoring}.values(), key=lambda s: s["draw"])
    for pc in precision:  # the float32 change against the float64 method's spread over draws
        lv = next(v for v in summary if v["pattern"] == pc["pattern"] and abs(v["sparsity"] - pc["sparsity"]) < 1e-9)
        sg = next(r for r in lv["rows"] if r["method"] == "sparsegpt")
        pc["ce_spread_over_draws"] = {"std": sg["answer_ce"]["std"], "range": sg["answer_ce"]["max"] - sg["answer_ce"]["min"]}
        delta = abs(pc["answer_ce"]["float32"] - pc["answer_ce"]["float64"])
        pc["within_spread"] = lv["draws"] > 1 and delta <= pc["ce_spread_over_draws"]["range"]
    transfer_summary = []
    for name in ("A->B", "B->A"):
        for setting in transfer_settings:
            pattern, sp = parse_setting(setting)
            level = [r for r in transfer if r["split"] == name and r["pattern"] == pattern and abs(r["target_sparsity"] - sp) < 1e-9]
            methods = {r["method"] for r in level}
            if methods & set(CAP_METHODS) and methods & set(BASELINES):  # a checkpoint may hold one side's stored rows only
                lv = {"split": name, "pattern": pattern, "sparsity": sp}
                draws = sorted({r.get("draw", 0) for r in level})  # compare() keeps the draws every method has run
                transfer_summary.append({**lv, **compare(level, draws, stored["known"].get(level_key(lv)))})
    rows = [["dense", "-", "0.00", "1", f"{dense['knowledge']['acc']:.3f}", "-", f"{dense['suite']['answer_ce']:.3f}", "0",
             "1.00", f"{ref.ppl:.1f}", "-"]]
    for lv in summary:
        for r in lv["rows"]:
            mark = " (best CAP)" if r["method"] == lv["best_cap"] else " (best baseline)" if r["method"] == lv["best_baseline"] else ""
            rows.append([r["method"] + mark, r["pattern"], f"{r['sparsity']:.2f}", r["draws"],
                         f"{r['acc']['mean']:.3f}", f"{r['acc']['min']:.3f}–{r['acc']['max']:.3f}",
                         f"{r['answer_ce']['mean']:.3f} ± {r['answer_ce']['std']:.3f}", f"{r['kl']['mean']:.4f}",
                         f"{r['retention']['mean']:.2f}", f"{r['ppl']['mean']:.1f}", f"{r['prune_seconds']['mean']:.0f}"])
    md = table(rows, ["method", "pattern", "sparsity", "draws", "acc (mean)", "acc range", "answer CE mean ± sd",
                      "KL to dense", "retention", "ppl", "prune CPU s"])
    print(md)
    per = ", ".join(f"{lv['pattern']} {lv['sparsity']:.2f}: {lv['draws']}" for lv in summary)
    (RESULTS / "pruning.md").write_text(f"Knowledge families n={ev.sizes()['knowledge']}, suite n={ev.sizes()['suite']}, "
                                        f"calibration draws per level ({per}).\n\n{md}\n")
    write_result("pruning", {"model": lm.source, "eval": ev.sizes(), "draws": max(lv["draws"] for lv in summary),
                             "draws_per_level": {f"{lv['pattern']} {lv['sparsity']:.2f}": lv["draws"] for lv in summary},
                             "draws_requested": args.draws, "first_draw": args.first_draw, "settings": settings,
                             "transfer_settings": transfer_settings, "score_mode": args.score_mode,
                             "kept_from": stored["kept_from"], "scoring": scoring,
                             "dense": {"knowledge": dense["knowledge"], "suite": dense["suite"], "ppl": ref.ppl,
                                       "reference": ref.as_dict()},
                             "summary": summary, "sparsegpt_precision": precision, "transfer_summary": transfer_summary,
                             "transfer": [packed(r) for r in transfer], "runs": [packed(r) for r in runs], "table_md": md})


def packed(run: dict) -> dict:
    """A run as stored: its per-problem knowledge hits as one string of 0/1 (150 characters), so a
    later --keep-stored run can recompute paired tests against it."""
    out = {k: v for k, v in run.items() if k != "hits"}
    if "hits" in run:
        out["hits"] = "".join("1" if h else "0" for h in run["hits"])
    return out


def unpacked(run: dict) -> dict:
    """``packed``'s inverse; runs stored before hits were kept have none."""
    return {**run, "hits": [c == "1" for c in run["hits"]]} if isinstance(run.get("hits"), str) else run


if __name__ == "__main__":
    main()
