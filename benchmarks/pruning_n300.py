"""Issue #17's accuracy at n >= 300: the knowledge accuracy of each level's best CAP method and best
baseline (as pruning.json's summary names them), re-pruned on a calibration draw (--draw, 0 by default) exactly as
pruning.py prunes them and evaluated on 300 knowledge problems (100 per family where the dense
model is above chance: pruning.py's 150 plus the next 150 of each family's held-out stream), with
a 95% Wilson interval and a paired McNemar test on the 300.

pruning.py keeps 150 so that a level fits in ~20 min per draw on 2 cores; this script spends its
time only on the two runs every criterion compares. Each re-pruned run is checked against the
stored one: its results on the stored 150 problems must agree (``stored_check``: per problem where
the stored run kept them, else the accuracy), which says
the same model was evaluated (a changed method default or a thread-count-sensitive N:M solve would
show here).

    python benchmarks/pruning_n300.py [--levels 0.1 0.2 0.3 0.5 2:4] [--draw 0] [--resume]

Runs of different draws can go side by side with --resume: each write merges under a lock.

Writes benchmarks/results/pruning_n300.json (after every level, so a stopped run leaves a result).
"""

from __future__ import annotations

import argparse
import json

from _common import RESULTS, result_lock, stored_row, write_result
from pruning import calibrate, parse_setting, prune_timed, scored
from pruning_compare import ALPHA
from cap_edge.assess import KNOWLEDGE
from cap_edge.backend import TorchBackend
from cap_edge.config import PruneConfig
from cap_edge.evaluate import evaluate, mcnemar
from cap_edge.models import load_model
from cap_edge.provenance import git_commit
from cap_edge.tasks import check_disjoint, load_split

PER_FAMILY = 100  # x 3 families = 300
STORED_PER_FAMILY = 50  # pruning.py's --knowledge-per-family


def agreement(new_hits: dict, stored_ids: list[str], old: dict) -> dict:
    """How much of the stored run the re-pruned model reproduces on the stored problems: each
    per-problem result where the stored run kept them, else its accuracy (runs stored before hits
    were kept)."""
    acc = sum(new_hits[i] for i in stored_ids) / len(stored_ids)
    out = {"n": len(stored_ids), "acc": acc, "stored_acc": old["acc"], "same_acc": abs(acc - old["acc"]) < 1e-9}
    if old.get("hits") is not None:
        out["same"] = sum(new_hits[i] == (h == "1") for i, h in zip(stored_ids, old["hits"]))
    return out


def measure(lm, original, cal, problems, stored_ids, stored, method, pattern, sp, draw) -> dict:
    cfg = PruneConfig(method=method, sparsity=sp, pattern=pattern)
    rep, cpu = prune_timed(lm, original, cal, cfg)
    res = evaluate(TorchBackend(lm.model, lm.tokenizer, progress=False), lm.tokenizer, problems)
    hits = {r["id"]: r["pred"] == r["gold"] for r in res["predictions"]}
    old = stored_row(stored["runs"], method, pattern, cfg.target_sparsity, draw)
    if old is None:
        raise LookupError(f"pruning.json holds no {method} run at {pattern} {cfg.target_sparsity} draw {draw}: run pruning.py first")
    return {"method": method, "draw": draw, "commit": git_commit(), "obs": rep.get("obs"),
            "achieved_sparsity": rep["achieved_sparsity"], "prune_seconds": cpu,
            **{k: res["overall"][k] for k in ("acc", "ci95", "n", "chance", "answer_ce")},
            "families": {f: v["acc"] for f, v in res["families"].items()},
            "stored": {"acc": old["acc"], "n": old["n"], "commit": old.get("commit"), "obs": old.get("obs")},
            "stored_check": agreement(hits, stored_ids, old),
            "hits": "".join("1" if hits[p.id] else "0" for p in problems)}


def level_result(lv: dict, cap: dict, base: dict) -> dict:
    t = mcnemar([c == "1" for c in cap["hits"]], [c == "1" for c in base["hits"]])
    return {"pattern": lv["pattern"], "sparsity": lv["sparsity"], "draw": cap["draw"], "best_cap": cap["method"], "best_baseline": base["method"],
            "acc_gap": cap["acc"] - base["acc"], "mcnemar": t,
            "not_significantly_worse": t["p_value"] >= ALPHA or t["a_only"] >= t["b_only"], "runs": [cap, base]}


def stored_levels(resume: bool) -> list[dict]:
    """The stored pruning_n300.json's levels (--resume), read under the lock at each write."""
    if not resume or not (RESULTS / "pruning_n300.json").exists():
        return []
    return [{"draw": 0, **v} for v in json.loads((RESULTS / "pruning_n300.json").read_text())["levels"]]  # stored before per-draw levels: draw 0


def stored_level(stored: dict, pattern: str, sparsity: float) -> dict:
    """pruning.json's summary of one level: which CAP method and baseline were best there."""
    return next(v for v in stored["summary"] if v["pattern"] == pattern and abs(v["sparsity"] - sparsity) < 1e-9)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--levels", nargs="+", default=["0.1", "0.2", "0.3", "0.5", "2:4"])
    ap.add_argument("--draw", type=int, default=0)
    ap.add_argument("--resume", action="store_true", help="keep the stored pruning_n300.json's levels (and draws) this run does not measure")
    args = ap.parse_args()
    stored = json.loads((RESULTS / "pruning.json").read_text())
    lm = load_model(None, device="cpu")
    original = {k: v.clone() for k, v in lm.model.state_dict().items()}
    problems = load_split(KNOWLEDGE, "eval", PER_FAMILY)
    stored_ids = [p.id for p in load_split(KNOWLEDGE, "eval", STORED_PER_FAMILY)]
    if len(problems) != 3 * PER_FAMILY or stored["eval"]["knowledge"] != len(stored_ids):
        raise SystemExit(f"expected {3 * PER_FAMILY} problems and pruning.json's {len(stored_ids)}, got {len(problems)} "
                         f"and {stored['eval']['knowledge']}")
    chosen = [(parse_setting(st), stored_level(stored, *parse_setting(st))) for st in args.levels]
    need = any(scored([setting], [lv["best_cap"], lv["best_baseline"]]) for setting, lv in chosen)  # CAP scores read
    cal = calibrate(lm, original, "embedded", args.draw, stored["score_mode"], scores=need)
    check_disjoint(cal["calib"], problems)
    mine: list[dict] = []  # this run's levels; the stored ones are read again at each write (runs of other draws side by side)
    for setting, ((pattern, sp), lv) in zip(args.levels, chosen):
        runs = [measure(lm, original, cal, problems, stored_ids, stored, m, pattern, sp, args.draw)
                for m in (lv["best_cap"], lv["best_baseline"])]
        for r in runs:
            print(f"{setting} {r['method']:14s}: acc {r['acc']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}] n={r['n']} "
                  f"(on the stored {r['stored_check']['n']}: {r['stored_check']['acc']:.3f}, stored {r['stored']['acc']:.3f}; "
                  f"same results {r['stored_check'].get('same', '-')}) {r['prune_seconds']:.0f}s", flush=True)
        mine.append(level_result(lv, *runs))
        with result_lock("pruning_n300"):
            ours = {(v["pattern"], v["sparsity"], v["draw"]) for v in mine}
            levels = mine + [v for v in stored_levels(args.resume) if (v["pattern"], v["sparsity"], v["draw"]) not in ours]
            levels.sort(key=lambda v: (v["pattern"] != "unstructured", v["sparsity"], v["draw"]))
            write_result("pruning_n300", {"model": lm.source, "knowledge": KNOWLEDGE, "n": len(problems),
                                          "draws": sorted({v["draw"] for v in levels}), "score_mode": stored["score_mode"],
                                          "pairs_from": "pruning.json summary (best_cap, best_baseline)", "levels": levels})


if __name__ == "__main__":
    main()
