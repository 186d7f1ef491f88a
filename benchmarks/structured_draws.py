"""``python benchmarks/structured.py --add-draws 1 2``: the structured benchmark's CAP and magnitude
selections repeated on other calibration draws (accuracy only; see structured.py's docstring)."""

from __future__ import annotations

import time

from _common import beyond_spread, spread, table, write_result
from cap_edge.backend import TorchBackend
from cap_edge.config import PruneConfig, ScoreConfig, replace
from cap_edge.evaluate import evaluate, mcnemar
from cap_edge.models import load_model
from cap_edge.pruning import prune_structured, refit_batch
from cap_edge.scoring import score_channels, score_heads
from cap_edge.tasks import calibration_problems, check_disjoint, load_split

KNOWLEDGE = "opposites,animals,geography"  # the families the dense model is clearly above chance on (README)


def accuracy(name: str, model, tok, ev, kev, hits: dict) -> dict:
    """Suite and knowledge accuracy/CE of one model; per-problem hits kept for the paired tests."""
    out = {}
    for key, problems in (("suite", ev), ("knowledge", kev)):
        r = evaluate(TorchBackend(model, tok, progress=False), tok, problems)
        o = r["overall"]
        out[key] = {"acc": o["acc"], "ci95": o["ci95"], "n": o["n"], "chance": o["chance"], "answer_ce": o["answer_ce"]}
        hits.setdefault(name, {})[key] = [p["pred"] == p["gold"] for p in r["predictions"]]
    return {**out["suite"], "knowledge": out["knowledge"]}


def eval_sets(args):
    ev = load_split("embedded", "eval", args.eval_per_family)
    kev = load_split(f"embedded:{KNOWLEDGE}", "eval", args.knowledge_per_family)
    for split in (ev, kev):
        check_disjoint(calibration_problems("embedded", max(args.calib, args.refit_problems)), split)
    return ev, kev


def select(level: float, heads, channels, batch, cfg, hits: dict, ev, kev, suffix: str = "") -> list[dict]:
    """CAP then magnitude selection at one level (magnitude gets CAP's attention/MLP split), refit, accuracy."""
    rows, split = [], None
    for method in ("cap", "magnitude"):
        name = f"{method}-{int(level * 100)}"
        fresh = load_model(None, device="cpu", dtype="fp32")
        rep = prune_structured(fresh.model, replace(cfg, method=method, sparsity=level), heads, channels,
                               split=split, batch=batch, progress=False)
        split = split or rep["removed"]
        rows.append({"name": name, "method": method, "level": level, "params": rep["params_after"],
                     "removed": rep["removed"], **accuracy(name + suffix, fresh.model, fresh.tokenizer, ev, kev, hits)})
    return rows


def add_draws(args) -> None:
    """Repeat the selections on other calibration draws (accuracy only) and summarise the spread."""
    import json

    from _common import RESULTS

    data = json.loads((RESULTS / "structured.json").read_text())
    cmd = data["command"]
    for flag, val in (("--calib", args.calib), ("--refit-problems", args.refit_problems),
                      ("--eval-per-family", args.eval_per_family), ("--knowledge-per-family", args.knowledge_per_family),
                      ("--channel-refine", args.channel_refine)):
        if f"{flag} {val} " not in cmd + " ":
            raise SystemExit(f"--add-draws must use the run's settings: expected {flag} as in {cmd!r}, got {val}")
    levels = sorted({r["level"] for r in data["rows"] if r["method"]})
    ev, kev = eval_sets(args)
    lm = load_model(None, device="cpu", dtype="fp32")
    base_cfg = PruneConfig(pattern="structured", refit_problems=args.refit_problems)
    store = data.setdefault("draws", {"runs": [], "hits": {}})
    # draw 0 is the full run above
    if not any(r["draw"] == 0 for r in store["runs"]):
        store["runs"] += [{"draw": 0, **{k: r[k] for k in ("name", "method", "level", "params", "acc", "ci95", "answer_ce", "knowledge")}}
                          for r in data["rows"] if r["method"]]
        store["hits"].update({f"{k}@0": v for k, v in data["hits"].items() if "/" not in k and k != "dense"})
    for d in args.add_draws:
        if any(r["draw"] == d for r in store["runs"]):
            print(f"draw {d} already measured", flush=True)
            continue
        t = time.perf_counter()
        calib = calibration_problems("embedded", args.calib, draw=d)
        heads = score_heads(lm.model, lm.tokenizer, calib, ScoreConfig())
        channels = score_channels(lm.model, lm.tokenizer, calib, ScoreConfig(), refine_fraction=args.channel_refine)
        batch = refit_batch(lm.tokenizer, "embedded", base_cfg, draw=d)
        hits = {}
        for level in levels:
            for r in select(level, heads, channels, batch, base_cfg, hits, ev, kev, suffix=f"@{d}"):
                store["runs"].append({"draw": d, **{k: r[k] for k in ("name", "method", "level", "params", "acc", "ci95",
                                                                         "answer_ce", "knowledge")}})
                print(f"draw {d} {r['name']}: suite {r['acc']:.3f} CE {r['answer_ce']:.3f} knowledge "
                      f"{r['knowledge']['acc']:.3f}", flush=True)
        store["hits"].update({k: {s: "".join("1" if x else "0" for x in v) for s, v in h.items()} for k, h in hits.items()})
        store.setdefault("seconds", {})[str(d)] = time.perf_counter() - t
        summarise_draws(data)
        data.pop("benchmark", None)
        data.pop("machine", None)
        store["command"] = "python benchmarks/structured.py --add-draws " + " ".join(
            str(x) for x in sorted({r["draw"] for r in store["runs"]} - {0}))
        write_result("structured", data)  # after every draw: a stopped run keeps what it measured


def summarise_draws(data: dict) -> None:
    """Per row: mean and range over draws; per level: CAP vs magnitude per draw (McNemar) and whether
    the knowledge-accuracy difference is larger than the spread (ranges over draws do not overlap)."""
    store = data["draws"]
    draws = sorted({r["draw"] for r in store["runs"]})
    summary, rows = [], []
    for name in dict.fromkeys(r["name"] for r in store["runs"]):
        rs = [r for r in store["runs"] if r["name"] == name]
        summary.append({"name": name, "method": rs[0]["method"], "level": rs[0]["level"], "draws": len(rs),
                        "acc": spread([r["acc"] for r in rs]), "answer_ce": spread([r["answer_ce"] for r in rs]),
                        "knowledge_acc": spread([r["knowledge"]["acc"] for r in rs]),
                        "knowledge_ce": spread([r["knowledge"]["answer_ce"] for r in rs])})
    comparisons = []
    for level in sorted({s["level"] for s in summary}):
        c, m = (next(s for s in summary if s["level"] == level and s["method"] == k) for k in ("cap", "magnitude"))
        per_draw = []
        for d in draws:
            hc, hm = store["hits"].get(f"{c['name']}@{d}"), store["hits"].get(f"{m['name']}@{d}")
            if hc and hm:
                per_draw.append({"draw": d, **{k: mcnemar([x == "1" for x in hc[k]], [x == "1" for x in hm[k]])
                                               for k in ("knowledge", "suite")}})
        verdict = {}
        for key in ("knowledge_acc", "acc"):
            hi, lo = (c, m) if c[key]["mean"] >= m[key]["mean"] else (m, c)
            verdict[key] = {"higher": hi["method"], "delta": hi[key]["mean"] - lo[key]["mean"],
                            "separated": beyond_spread(hi[key], lo[key])}
        comparisons.append({"level": level, "mcnemar_per_draw": per_draw, "verdict": verdict})
    for s in summary:
        rows.append([s["name"], s["draws"],
                     f"{s['knowledge_acc']['mean']:.3f} ({s['knowledge_acc']['min']:.3f}-{s['knowledge_acc']['max']:.3f})",
                     f"{s['knowledge_ce']['mean']:.2f} ± {s['knowledge_ce']['std']:.2f}",
                     f"{s['acc']['mean']:.3f} ({s['acc']['min']:.3f}-{s['acc']['max']:.3f})",
                     f"{s['answer_ce']['mean']:.2f} ± {s['answer_ce']['std']:.2f}"])
    md = table(rows, ["model", "draws", "knowledge acc mean (range)", "knowledge CE mean ± sd", "suite acc mean (range)",
                      "suite CE mean ± sd"])
    crow = [[f"{int(cp['level'] * 100)}%",
             "; ".join(f"d{t['draw']}: {t['knowledge']['a_only']} vs {t['knowledge']['b_only']}, p={t['knowledge']['p_value']:.2g}"
                       for t in cp["mcnemar_per_draw"]),
             f"{cp['verdict']['knowledge_acc']['higher']} +{cp['verdict']['knowledge_acc']['delta']:.3f}, "
             + ("beyond the spread" if cp["verdict"]["knowledge_acc"]["separated"] else "within the spread"),
             f"{cp['verdict']['acc']['higher']} +{cp['verdict']['acc']['delta']:.3f}, "
             + ("beyond the spread" if cp["verdict"]["acc"]["separated"] else "within the spread")]
            for cp in comparisons]
    cmd_md = table(crow, ["removed", "knowledge: CAP-only vs magnitude-only right, per draw", "knowledge acc (mean over draws)",
                          "suite acc (mean over draws)"])
    store.update({"draws": draws, "summary": summary, "comparisons": comparisons, "table_md": md, "compare_md": cmd_md})
