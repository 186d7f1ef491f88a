"""Why transfer validation cannot see the test split's A->B 30% knowledge losses: the same pruned models
(calibrated on half A, each of pruning.py's transfer draws) answer half B's knowledge problems from three pools, side by side.

    python benchmarks/knowledge_sets.py [--draws 0 1 2] [--methods wanda sparsegpt cap-wanda]

Pools: "test", the knowledge problems pruning.py's A->B transfer rows evaluate (the first 100 of each family's
evaluation stream); "validation calib", the families' calibration split (guided_tuning --knowledge-val's first part);
"validation tail", their evaluation stream past every test pool (its second part). SparseGPT keeps fewer of those
answers than Wanda on the test pool (pooled over draws 0-2: 9/56), a third as many fewer on validation (10/31); cap-wanda's
every-block default did too (22/43 and 11/18; twelfth round), its attention-only default since the thirteenth round is
level with Wanda on both (9/13 and 13/5; docs/methods.md). Writes benchmarks/results/knowledge_sets.json: each
model's accuracy and answer CE per pool, McNemar against Wanda per pool, and whether the test-pool hits reproduce the
stored pruning.json row of the same method and draw.
"""

from __future__ import annotations

import argparse
import json

from _common import RESULTS, stored_row, table, write_result
from pruning import SPLITS, TRANSFER_KNOWLEDGE, calibrate, prune_timed, scored
from validation_sets import knowledge_validation_parts
from cap_edge.backend import TorchBackend
from cap_edge.config import PruneConfig
from cap_edge.evaluate import evaluate, mcnemar
from cap_edge.models import load_model
from cap_edge.tasks import load_split

SPLIT = "A->B"


def pools() -> dict[str, list]:
    """The three pools of half B's knowledge problems (disjoint: asserted)."""
    know = SPLITS[SPLIT][1]
    test = load_split(know, "eval", TRANSFER_KNOWLEDGE[SPLIT])
    parts = knowledge_validation_parts(SPLIT)  # as guided_tuning --split A->B --knowledge-val builds them
    out = {"test": test, "validation calib": [p for calib, _ in parts for p in calib],
           "validation tail": [p for _, extra in parts for p in extra]}
    keys = [p.key for ps in out.values() for p in ps]
    assert len(keys) == len(set(keys)), "the pools must be disjoint"
    return out


def answer(lm, problems_by_pool: dict) -> tuple[dict, list]:
    """The loaded model's hits per pool, and its accuracy and answer CE per pool."""
    hits, rows = {}, []
    for pool, problems in problems_by_pool.items():
        ev = evaluate(TorchBackend(lm.model, lm.tokenizer, progress=False), lm.tokenizer, problems)
        got = {p["id"]: p["pred"] == p["gold"] for p in ev["predictions"]}
        hits[pool] = [got[p.id] for p in problems]
        rows.append({"pool": pool, "n": len(problems), "acc": ev["overall"]["acc"], "answer_ce": ev["overall"]["answer_ce"]})
    return hits, rows


def _bits(by_pool: dict) -> dict:
    return {pool: "".join("1" if h else "0" for h in hs) for pool, hs in by_pool.items()}


def stored_hits(dense: dict, hits: dict) -> dict:
    """Per draw, each model's hits per pool as "0"/"1" strings; the dense model's (the same every draw) under the first."""
    out = {str(d): {m: _bits(by) for m, by in hd.items()} for d, hd in hits.items()}
    first = next(iter(out))
    out[first] = {"dense": _bits(dense), **out[first]}
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--draws", nargs="+", type=int, default=[0, 1, 2], help="calibration draws of half A (pruning.py's --transfer-draws)")
    ap.add_argument("--methods", nargs="+", default=["wanda", "sparsegpt", "cap-wanda"])
    ap.add_argument("--sparsity", type=float, default=0.3)
    ap.add_argument("--score-mode", default="hybrid")
    args = ap.parse_args()
    lm = load_model(None, device="cpu")
    sets = pools()
    original = {k: v.clone() for k, v in lm.model.state_dict().items()}
    need = scored([("unstructured", args.sparsity)], args.methods)
    stored = json.loads((RESULTS / "pruning.json").read_text())["transfer"]
    dense_hits, dense_rows = answer(lm, sets)  # the dense model: the same for every draw
    hits, rows, paired, reproduced = {}, [{"draw": "-", "model": "dense", **r} for r in dense_rows], [], {}
    for d in args.draws:
        cal = calibrate(lm, original, SPLITS[SPLIT][0], d, args.score_mode, scores=need)  # restores the dense weights
        hits[d] = {}
        for m in args.methods:
            prune_timed(lm, original, cal, PruneConfig(method=m, sparsity=args.sparsity, pattern="unstructured"))
            hits[d][m], got = answer(lm, sets)
            rows += [{"draw": d, "model": m, **r} for r in got]
            print(d, m, " ".join(f"{r['pool']} {r['acc']:.3f}" for r in got), flush=True)
            r = stored_row(stored, m, "unstructured", args.sparsity, d, SPLIT)
            if r:  # the stored test row of the same method, split, level and draw
                reproduced[f"{m} draw {d}"] = sum(a == (b == "1") for a, b in zip(hits[d][m]["test"], r["hits"]))
        others = {"dense": dense_hits, **{m: h for m, h in hits[d].items() if m != "wanda"}}  # dense: what Wanda itself loses
        for m, h in others.items():
            for pool in sets:
                t = mcnemar(h[pool], hits[d]["wanda"][pool])
                paired.append({"draw": d, "model": m, "pool": pool, "a_only": t["a_only"], "b_only": t["b_only"],
                               "p_value": t["p_value"]})
    lm.model.load_state_dict(original)
    md = table([[r["draw"], r["model"], r["pool"], r["n"], f"{r['acc']:.3f}", f"{r['answer_ce']:.3f}"] for r in rows],
               ["draw", "model", "pool", "n", "acc", "answer CE"])
    md += "\n\nAgainst Wanda of the same draw (same pool): answers only the model got / only Wanda got\n\n" + table(
        [[p["draw"], p["model"], p["pool"], f"{p['a_only']}/{p['b_only']}", f"{p['p_value']:.3f}"] for p in paired],
        ["draw", "model", "pool", "only it / only Wanda", "McNemar p"])
    md += "\n\nTest-pool answers equal to the stored pruning.json row: " + ", ".join(
        f"{m} {k}/{len(sets['test'])}" for m, k in reproduced.items())
    print(md)
    write_result("knowledge_sets", {"split": SPLIT, "draws": args.draws, "sparsity": args.sparsity, "score_mode": args.score_mode,
                                    "pools": {k: len(v) for k, v in sets.items()}, "rows": rows, "paired": paired,
                                    "test_hits_reproduced": reproduced, "table_md": md,
                                    "hits": stored_hits(dense_hits, hits)})


if __name__ == "__main__":
    main()
