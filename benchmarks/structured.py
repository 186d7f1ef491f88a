"""Dense vs structurally pruned SmolLM2-135M (whole heads and MLP channel groups removed) at 10/20/30%
of all parameters, CAP-guided vs magnitude-guided selection, in one run:

* accuracy (acc_norm) and gold-answer CE on held-out embedded problems (PyTorch);
* llama.cpp Q8_0 GGUF (``deci`` for the pruned models): prefill and decode tokens/s, peak RSS, size;
* ONNX Runtime fp32 (KV cache): time to first token and decode tokens/s, peak RSS, size.

Every artifact is validated against PyTorch before it is timed. Magnitude selection gets the same
attention/MLP split as CAP's plan at each level, so the comparison is about *which* heads and
channels go, not how much of each kind.

    python benchmarks/structured.py [--eval-per-family 20] [--levels 0.1 0.2 0.3]

Writes benchmarks/results/structured.json.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from _common import table, write_result
from cap_edge.config import PruneConfig, ScoreConfig
from cap_edge.errors import ValidationError
from cap_edge.evaluate import TorchBackend, evaluate
from cap_edge.models import load_model
from cap_edge.pipeline import export_artifact, measure_artifact
from cap_edge.prune_io import save_pruned
from cap_edge.pruning import prune_structured
from cap_edge.scoring import score_channels, score_heads
from cap_edge.tasks import calibration_problems, check_disjoint, load_split

WORK = Path("runs/structured-bench")


def export_all(model_dir: Path, name: str, reference) -> dict:
    """Export + validate both formats; an invalid artifact is kept (and timed later, flagged)."""
    import json

    out = WORK / f"{name}-artifacts"
    shutil.rmtree(out, ignore_errors=True)
    res = {}
    for fmt, prec in (("gguf", "q8_0"), ("onnx", "fp32")):
        t = time.perf_counter()
        try:
            export_artifact(model_dir, fmt, prec, out, reference=reference)
        except ValidationError as e:
            print(f"  {fmt}:{prec} INVALID: {e}", flush=True)
        entry = next(a for a in json.loads((out / "manifest.json").read_text())["artifacts"]
                     if a["format"] == fmt and a["precision"] == prec)
        v = entry["validation"]
        res[fmt] = {"precision": prec, "valid": entry["valid"], "path": entry["path"], "bytes": entry["bytes"],
                    "compressed_bytes": entry["compressed_bytes"], "export_seconds": time.perf_counter() - t,
                    "mean_kl": v["mean_kl"], "max_abs_logit_diff": v["max_abs_logit_diff"],
                    "top1_agreement": v["top1_agreement"], "top1_decisive": v.get("top1_agreement_decisive"),
                    "failures": v.get("failures", []), "arch": entry["metadata"].get("gguf_arch")}
    return res


def time_all(rows: list[dict], args) -> None:
    """Interleaved rounds: every artifact once per round, so machine drift hits all of them alike;
    per artifact the median over rounds of each round's median."""
    import statistics

    samples = {}
    for rnd in range(args.rounds):
        for r in rows:
            for fmt in ("gguf", "onnx"):
                a = r[fmt]
                lat = measure_artifact(fmt, a["path"], args.prompt_tokens, args.gen_tokens, args.runs)
                samples.setdefault((r["name"], fmt), []).append(lat)
        print(f"timing round {rnd + 1}/{args.rounds} done", flush=True)
    for r in rows:
        for fmt in ("gguf", "onnx"):
            lats = samples[(r["name"], fmt)]
            for key in ("decode_tok_s", "prefill_tok_s", "ttft_s"):
                vals = [x[key]["median"] for x in lats]
                r[fmt][key] = {"median": statistics.median(vals), "rounds": vals}
            r[fmt]["peak_rss_mb"] = max(x["peak_rss_mb"] for x in lats)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--eval-per-family", type=int, default=20)
    ap.add_argument("--calib", type=int, default=32)
    ap.add_argument("--levels", type=float, nargs="+", default=[0.1, 0.2, 0.3])
    ap.add_argument("--channel-refine", type=float, default=0.1)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--gen-tokens", type=int, default=64)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    lm = load_model(None, device="cpu", dtype="fp32")
    calib = calibration_problems("embedded", args.calib)
    ev = load_split("embedded", "eval", args.eval_per_family)
    check_disjoint(calib, ev)
    t = time.perf_counter()
    heads = score_heads(lm.model, lm.tokenizer, calib, ScoreConfig())
    head_s = time.perf_counter() - t
    t = time.perf_counter()
    channels = score_channels(lm.model, lm.tokenizer, calib, ScoreConfig(), refine_fraction=args.channel_refine)
    channel_s = time.perf_counter() - t
    print(f"head scores {head_s:.0f}s (cache hit {heads.get('cache_hit')}), channel scores {channel_s:.0f}s "
          f"(cache hit {channels.get('cache_hit')}, {channels.get('refined_units')} groups refined exactly)", flush=True)

    def accuracy(model, tok) -> dict:
        r = evaluate(TorchBackend(model, tok, progress=False), tok, ev)["overall"]
        return {"acc": r["acc"], "ci95": r["ci95"], "n": r["n"], "chance": r["chance"], "answer_ce": r["answer_ce"]}

    rows = []
    dense_params = sum(p.numel() for p in lm.model.parameters())
    print("dense", flush=True)
    dense = {"name": "dense", "method": None, "level": 0.0, "params": dense_params, **accuracy(lm.model, lm.tokenizer),
             **export_all(lm.path, "dense", (lm.model, lm.tokenizer))}
    rows.append(dense)
    for level in args.levels:
        split = None
        for method in ("cap", "magnitude"):
            name = f"{method}-{int(level * 100)}"
            print(name, flush=True)
            fresh = load_model(None, device="cpu", dtype="fp32")
            cfg = PruneConfig(method=method, pattern="structured", sparsity=level)
            rep = prune_structured(fresh.model, cfg, heads, channels, split=split if method == "magnitude" else None)
            if method == "cap":
                split = rep["removed"]  # magnitude gets CAP's attention/MLP split
            d = save_pruned(fresh.model, fresh.tokenizer, WORK / name, rep, overwrite=True)
            row = {"name": name, "method": method, "level": level, "params": rep["params_after"],
                   "achieved": rep["achieved_sparsity"], "removed": rep["removed"], "sizes": rep["sizes"],
                   **accuracy(fresh.model, fresh.tokenizer), **export_all(d, name, (fresh.model, fresh.tokenizer))}
            print(f"  acc {row['acc']:.3f} CE {row['answer_ce']:.3f}", flush=True)
            rows.append(row)

    time_all(rows, args)

    def ratio(r, fmt, key):
        return r[fmt][key]["median"] / dense[fmt][key]["median"]

    for r in rows:
        r["vs_dense"] = {"gguf_decode": ratio(r, "gguf", "decode_tok_s"), "gguf_prefill": ratio(r, "gguf", "prefill_tok_s"),
                         "onnx_decode": ratio(r, "onnx", "decode_tok_s"), "onnx_ttft": ratio(r, "onnx", "ttft_s")}

    def f(x, spec=".3f"):
        return "—" if x is None else format(x, spec)

    def valid(r, fmt):
        a = r[fmt]
        return "yes" if a["valid"] else f"no (KL {a['mean_kl']:.2f}, max diff {a['max_abs_logit_diff']:.3g})"

    md = table([[r["name"], f"{1 - r['params'] / dense_params:.3f}", f"{r['acc']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]",
                 f(r["answer_ce"]), f(r["gguf"]["decode_tok_s"]["median"], ".1f"), f(r["vs_dense"]["gguf_decode"], ".2f") + "×",
                 f(r["gguf"]["prefill_tok_s"]["median"], ".0f"), f(r["vs_dense"]["gguf_prefill"], ".2f") + "×", valid(r, "gguf"),
                 f(r["onnx"]["decode_tok_s"]["median"], ".1f"), f(r["vs_dense"]["onnx_decode"], ".2f") + "×",
                 f(r["onnx"]["ttft_s"]["median"], ".3f"), valid(r, "onnx"),
                 f(r["gguf"]["peak_rss_mb"], ".0f"), f(r["onnx"]["peak_rss_mb"], ".0f"),
                 f(r["gguf"]["bytes"] / 1e6, ".1f"), f(r["onnx"]["bytes"] / 1e6, ".1f")] for r in rows],
               ["model", "params removed", "acc [95% CI]", "answer CE", "llama.cpp decode tok/s", "vs dense",
                "llama.cpp prefill tok/s", "vs dense", "Q8_0 valid", "ORT decode tok/s", "vs dense", "ORT TTFT s",
                "ONNX fp32 valid", "llama.cpp RSS MB", "ORT RSS MB", "Q8_0 MB", "ONNX MB"])
    print(md)
    write_result("structured", {
        "command": "python benchmarks/structured.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
                                                                 if not isinstance(v, list)) + " --levels " + " ".join(map(str, args.levels)),
        "model": lm.source, "calibration_problems": len(calib), "eval_problems": len(ev),
        "head_scores": {"cache_key": heads["hashes"]["cache_key"], "seconds": heads.get("seconds"), "mode": heads["mode"]},
        "channel_scores": {"cache_key": channels["hashes"]["cache_key"], "seconds": channels.get("seconds"),
                           "refined_units": channels.get("refined_units"), "group": channels.get("group")},
        "note": "host-measured on this machine's CPU; every artifact timed once per round, rounds interleaved, "
                "median over rounds; invalid artifacts are timed too and flagged (their speed is the runtime's on "
                "those shapes, their numbers are not trusted); llama.cpp Q8_0 (deci architecture for pruned "
                "models), ONNX Runtime fp32 CPU EP",
        "rows": rows, "table_md": md, "seconds": time.perf_counter() - t_all})


if __name__ == "__main__":
    main()
