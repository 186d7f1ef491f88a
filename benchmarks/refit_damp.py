"""How strongly to damp the structured refit: CAP-guided structured pruning of the embedded model
at one level, without the refit and with it at several ridge strengths, each judged on

* accuracy and gold-answer CE on the knowledge families (the dense model is above chance there);
* the largest |weight| of o_proj / down_proj after the refit (a refit that rebuilds a removed
  massive-activation channel from its neighbours writes huge coefficients);
* whether its llama.cpp Q8_0 export still passes validation against PyTorch (8-bit blocks share
  one scale, so one huge weight costs its 31 block-mates their precision).

    python benchmarks/structured.py     # not needed: scores are computed (or read from the cache) here
    python benchmarks/refit_damp.py [--level 0.3] [--damps 0.01 0.1 1.0]

Writes benchmarks/results/refit_damp.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from _common import table, write_result
from cap_edge.config import PruneConfig, ScoreConfig, replace
from cap_edge.errors import ValidationError
from cap_edge.backend import TorchBackend
from cap_edge.evaluate import evaluate
from cap_edge.models import load_model
from cap_edge.deploy.export import export_artifact
from cap_edge.prune_io import save_pruned
from cap_edge.pruning import prune_structured, refit_batch
from cap_edge.scoring import score_channels, score_heads
from cap_edge.tasks import calibration_problems, check_disjoint, load_split
from structured import KNOWLEDGE

WORK = Path("runs/refit-damp")


def max_weights(model) -> dict:
    o = d = 0.0
    for layer in model.model.layers:
        if hasattr(layer.self_attn, "o_proj"):
            o = max(o, float(layer.self_attn.o_proj.weight.abs().max()))
        d = max(d, float(layer.mlp.down_proj.weight.abs().max()))
    return {"o_proj": o, "down_proj": d}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--level", type=float, default=0.3)
    ap.add_argument("--damps", type=float, nargs="+", default=[0.01, 0.1, 1.0])
    ap.add_argument("--knowledge-per-family", type=int, default=50)
    ap.add_argument("--calib", type=int, default=32)
    ap.add_argument("--refit-problems", type=int, default=256)
    args = ap.parse_args()
    t_all = time.perf_counter()
    lm = load_model(None, device="cpu", dtype="fp32")
    calib = calibration_problems("embedded", args.calib)
    kev = load_split(f"embedded:{KNOWLEDGE}", "eval", args.knowledge_per_family)
    check_disjoint(calibration_problems("embedded", max(args.calib, args.refit_problems)), kev)
    heads = score_heads(lm.model, lm.tokenizer, calib, ScoreConfig())
    channels = score_channels(lm.model, lm.tokenizer, calib, ScoreConfig(), refine_fraction=0.1)
    base = PruneConfig(method="cap", pattern="structured", sparsity=args.level, refit_problems=args.refit_problems)
    batch = refit_batch(lm.tokenizer, "embedded", base)
    rows = []
    for damp in [None] + args.damps:
        name = "no refit" if damp is None else f"damp {damp:g}"
        print(name, flush=True)
        m = load_model(None, device="cpu", dtype="fp32")
        cfg = replace(base, refit=False) if damp is None else replace(base, refit_damp=damp)
        rep = prune_structured(m.model, cfg, heads, channels, batch=batch)
        o = evaluate(TorchBackend(m.model, m.tokenizer, progress=False), m.tokenizer, kev)["overall"]
        d = save_pruned(m.model, m.tokenizer, WORK / "model", rep, overwrite=True)
        shutil.rmtree(WORK / "artifacts", ignore_errors=True)
        try:
            export_artifact(d, "gguf", "q8_0", WORK / "artifacts", reference=(m.model, m.tokenizer))
        except ValidationError as e:
            print(f"  q8_0 INVALID: {e}", flush=True)
        entry = json.loads((WORK / "artifacts" / "manifest.json").read_text())["artifacts"][0]
        v = entry["validation"]
        rows.append({"name": name, "damp": damp, "acc": o["acc"], "ci95": o["ci95"], "answer_ce": o["answer_ce"],
                     "max_abs_weight": max_weights(m.model), "q8_0_valid": entry["valid"], "q8_0_mean_kl": v["mean_kl"],
                     "q8_0_top1_decisive": v.get("top1_agreement_decisive")})
        print(f"  {rows[-1]}", flush=True)
    md = table([[r["name"], f"{r['acc']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]", f"{r['answer_ce']:.2f}",
                 f"{r['max_abs_weight']['o_proj']:.1f}", f"{r['max_abs_weight']['down_proj']:.1f}",
                 "yes" if r["q8_0_valid"] else "no", f"{r['q8_0_mean_kl']:.3f}"] for r in rows],
               ["refit", "knowledge acc [95% CI]", "knowledge CE", "max |w| o_proj", "max |w| down_proj",
                "Q8_0 valid", "Q8_0 mean KL (tol 0.2)"])
    print(md)
    write_result("refit_damp", {
        "command": f"python benchmarks/refit_damp.py --level {args.level} --damps {' '.join(map(str, args.damps))} "
                   f"--knowledge-per-family {args.knowledge_per_family} --calib {args.calib} --refit-problems {args.refit_problems}",
        "model": lm.source, "method": "cap", "level": args.level, "knowledge_problems": len(kev),
        "chance": 0.25, "refit_problems": batch.n, "rows": rows, "table_md": md, "seconds": time.perf_counter() - t_all})


if __name__ == "__main__":
    main()
