"""Dense vs structurally pruned SmolLM2-135M (whole heads and MLP channel groups removed) at 10/20/30%
of all parameters, CAP-guided vs magnitude-guided selection, in one run:

* accuracy (acc_norm) and gold-answer CE on held-out embedded problems (PyTorch): the whole suite,
  and the three knowledge families on which the dense model is clearly above chance (on the
  synthetic families it is at chance, so their accuracy is noise at any sparsity); CAP vs magnitude
  compared problem by problem (exact McNemar test);
* the same selections without the least-squares refit of o_proj/down_proj (accuracy only), to show
  what the refit is worth;
* llama.cpp Q8_0 GGUF (``deci`` for the pruned models): prefill and decode tokens/s, peak RSS, size;
* ONNX Runtime fp32 (KV cache): time to first token and decode tokens/s, peak RSS, size.

Every artifact is validated against PyTorch before it is timed. Magnitude selection gets the same
attention/MLP split as CAP's plan at each level, so the comparison is about *which* heads and
channels go, not how much of each kind; both get the same refit on the same calibration batch.

    python benchmarks/structured.py [--eval-per-family 20] [--knowledge-per-family 100] [--levels 0.1 0.2 0.3]
    python benchmarks/structured.py --add-draws 1 2   # the same selections from other calibration draws

Writes benchmarks/results/structured.json. ``--add-draws`` repeats the selection (head and channel
scores, refit batch) on other calibration draws of the run above (same evaluation problems, same
scoring mode) and measures accuracy only; it adds each row's mean and spread over the draws and
says where CAP vs magnitude is larger than that spread (issue #23). Artifacts and timings stay those
of draw 0: speed depends on the shapes removed, which the draws share.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from _common import table, write_result
from cap_edge.config import PruneConfig, ScoreConfig, replace
from cap_edge.errors import ValidationError
from cap_edge.evaluate import mcnemar
from cap_edge.models import load_model
from cap_edge.deploy.export import export_artifact, measure_artifact
from cap_edge.prune_io import save_pruned
from cap_edge.pruning import prune_structured, refit_batch
from cap_edge.scoring import score_channels, score_heads
from cap_edge.tasks import calibration_problems
from structured_draws import KNOWLEDGE, accuracy, add_draws, eval_sets

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


def tables(rows: list[dict], no_refit: dict, paired: dict) -> tuple[str, str, str]:
    """Speed-ups against the dense row (written into each row) and the three markdown tables."""
    dense = rows[0]
    dense_params = dense["params"]

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

    def acc(d):
        return f"{d['acc']:.3f} [{d['ci95'][0]:.3f}, {d['ci95'][1]:.3f}]"

    acc_md = table([[r["name"], acc(r["knowledge"]), f(r["knowledge"]["answer_ce"], ".2f"), acc(r), f(r["answer_ce"], ".2f")]
                    + ([acc(no_refit[r["name"]]["knowledge"]), f(no_refit[r["name"]]["knowledge"]["answer_ce"], ".2f"),
                        f(no_refit[r["name"]]["acc"]), f(no_refit[r["name"]]["answer_ce"], ".2f")]
                       if r["name"] in no_refit else ["—"] * 4) for r in rows],
                   ["model", "knowledge acc [95% CI]", "knowledge CE", "suite acc [95% CI]", "suite CE",
                    "no refit: knowledge acc", "knowledge CE", "suite acc", "suite CE"])
    pair_md = table([[f"{lvl}%"] + [f"{p[k]['a_only']} vs {p[k]['b_only']}, p = {p[k]['p_value']:.3g}"
                                    for k in ("knowledge", "suite", "knowledge/no-refit", "suite/no-refit")]
                     for lvl, p in paired.items()],
                    ["removed", "knowledge: CAP-only vs magnitude-only right", "suite", "knowledge, no refit", "suite, no refit"])
    md = table([[r["name"], f"{1 - r['params'] / dense_params:.3f}", acc(r["knowledge"]), acc(r),
                 f(r["answer_ce"]), f(r["gguf"]["decode_tok_s"]["median"], ".1f"), f(r["vs_dense"]["gguf_decode"], ".2f") + "×",
                 f(r["gguf"]["prefill_tok_s"]["median"], ".0f"), f(r["vs_dense"]["gguf_prefill"], ".2f") + "×", valid(r, "gguf"),
                 f(r["onnx"]["decode_tok_s"]["median"], ".1f"), f(r["vs_dense"]["onnx_decode"], ".2f") + "×",
                 f(r["onnx"]["ttft_s"]["median"], ".3f"), valid(r, "onnx"),
                 f(r["gguf"]["peak_rss_mb"], ".0f"), f(r["onnx"]["peak_rss_mb"], ".0f"),
                 f(r["gguf"]["bytes"] / 1e6, ".1f"), f(r["onnx"]["bytes"] / 1e6, ".1f")] for r in rows],
               ["model", "params removed", "knowledge acc [95% CI]", "suite acc [95% CI]", "suite answer CE", "llama.cpp decode tok/s", "vs dense",
                "llama.cpp prefill tok/s", "vs dense", "Q8_0 valid", "ORT decode tok/s", "vs dense", "ORT TTFT s",
                "ONNX fp32 valid", "llama.cpp RSS MB", "ORT RSS MB", "Q8_0 MB", "ONNX MB"])
    return md, acc_md, pair_md


def retime(args) -> None:
    """Time the artifacts of the last full run again (more rounds on a noisy machine); accuracy,
    validation and sizes stay those of that run."""
    import json

    from _common import RESULTS

    data = json.loads((RESULTS / "structured.json").read_text())
    rows = data["rows"]
    # keep what earlier timings said: on this machine one run's ratios move by +-15%
    data.setdefault("timing_history", []).append(
        {"command": data.get("timing", {}).get("command", data["command"]), "date": data["machine"]["date"],
         "vs_dense": {r["name"]: r["vs_dense"] for r in rows}})
    t = time.perf_counter()
    time_all(rows, args)
    md, acc_md, pair_md = tables(rows, data["no_refit"], data["paired"])
    print(md)
    data.pop("benchmark", None)
    data.pop("machine", None)
    data.update({"rows": rows, "table_md": md, "accuracy_md": acc_md, "paired_md": pair_md,
                 "timing": {"command": f"python benchmarks/structured.py --retime --rounds {args.rounds} --runs {args.runs}",
                            "rounds": args.rounds, "runs": args.runs, "seconds": time.perf_counter() - t,
                            "note": "artifacts of the full run above, timed again; accuracy and validation unchanged"}})
    write_result("structured", data)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--eval-per-family", type=int, default=20)
    ap.add_argument("--knowledge-per-family", type=int, default=100)
    ap.add_argument("--calib", type=int, default=32)
    ap.add_argument("--refit-problems", type=int, default=256)
    ap.add_argument("--levels", type=float, nargs="+", default=[0.1, 0.2, 0.3])
    ap.add_argument("--channel-refine", type=float, default=0.1)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--gen-tokens", type=int, default=64)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--retime", action="store_true", help="only time the artifacts of the last run again")
    ap.add_argument("--add-draws", type=int, nargs="+", metavar="DRAW",
                    help="repeat the selections of the last run on these calibration draws (accuracy only)")
    args = ap.parse_args()
    if args.retime:
        return retime(args)
    if args.add_draws:
        return add_draws(args)
    WORK.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    lm = load_model(None, device="cpu", dtype="fp32")
    calib = calibration_problems("embedded", args.calib)
    ev, kev = eval_sets(args)
    base_cfg = PruneConfig(pattern="structured", refit_problems=args.refit_problems)
    batch = refit_batch(lm.tokenizer, "embedded", base_cfg)
    t = time.perf_counter()
    heads = score_heads(lm.model, lm.tokenizer, calib, ScoreConfig())
    head_s = time.perf_counter() - t
    t = time.perf_counter()
    channels = score_channels(lm.model, lm.tokenizer, calib, ScoreConfig(), refine_fraction=args.channel_refine)
    channel_s = time.perf_counter() - t
    print(f"head scores {head_s:.0f}s (cache hit {heads.get('cache_hit')}), channel scores {channel_s:.0f}s "
          f"(cache hit {channels.get('cache_hit')}, {channels.get('refined_units')} groups refined exactly)", flush=True)

    hits = {}  # name -> {"suite": [bool], "knowledge": [bool]}, for the paired comparisons

    def acc_of(name, model, tok) -> dict:
        return accuracy(name, model, tok, ev, kev, hits)

    def refit_summary(rep) -> dict:
        """Mean over layers of the relative output error of o_proj / down_proj on the refit batch."""
        layers = rep["refit"]["layers"]
        return {k: {w: sum(x[k][w] for x in layers if k in x) / max(1, sum(k in x for x in layers))
                    for w in ("zeroed", "refit")} for k in ("heads", "channels")}

    rows, no_refit = [], {}
    dense_params = sum(p.numel() for p in lm.model.parameters())
    print("dense", flush=True)
    dense = {"name": "dense", "method": None, "level": 0.0, "params": dense_params,
             **acc_of("dense", lm.model, lm.tokenizer), **export_all(lm.path, "dense", (lm.model, lm.tokenizer))}
    rows.append(dense)
    for level in args.levels:
        split = None
        for method in ("cap", "magnitude"):
            name = f"{method}-{int(level * 100)}"
            print(name, flush=True)
            cfg = replace(base_cfg, method=method, sparsity=level)
            plain = load_model(None, device="cpu", dtype="fp32")
            rep0 = prune_structured(plain.model, replace(cfg, refit=False), heads, channels,
                                    split=split if method == "magnitude" else None)
            if method == "cap":
                split = rep0["removed"]  # magnitude gets CAP's attention/MLP split
            no_refit[name] = acc_of(name + "/no-refit", plain.model, plain.tokenizer)
            del plain
            fresh = load_model(None, device="cpu", dtype="fp32")
            t = time.perf_counter()
            rep = prune_structured(fresh.model, cfg, heads, channels, split=split if method == "magnitude" else None,
                                   batch=batch, progress=True)
            assert rep["kept"] == rep0["kept"]  # the refit changes weights, never the plan
            d = save_pruned(fresh.model, fresh.tokenizer, WORK / name, rep, overwrite=True)
            row = {"name": name, "method": method, "level": level, "params": rep["params_after"],
                   "achieved": rep["achieved_sparsity"], "removed": rep["removed"], "sizes": rep["sizes"],
                   "prune_seconds": time.perf_counter() - t, "refit_error": refit_summary(rep),
                   **acc_of(name, fresh.model, fresh.tokenizer), **export_all(d, name, (fresh.model, fresh.tokenizer))}
            print(f"  acc {row['acc']:.3f} CE {row['answer_ce']:.3f} knowledge {row['knowledge']['acc']:.3f}; "
                  f"no refit {no_refit[name]['acc']:.3f} / {no_refit[name]['knowledge']['acc']:.3f}", flush=True)
            rows.append(row)

    paired = {}
    for level in args.levels:
        c, m = f"cap-{int(level * 100)}", f"magnitude-{int(level * 100)}"
        paired[f"{int(level * 100)}"] = {f"{key}{suffix}": mcnemar(hits[c + suffix][key], hits[m + suffix][key])
                                         for key in ("knowledge", "suite") for suffix in ("", "/no-refit")}

    time_all(rows, args)
    md, acc_md, pair_md = tables(rows, no_refit, paired)
    print(md)
    print(acc_md)
    print(pair_md)
    write_result("structured", {
        "command": "python benchmarks/structured.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
                                                                 if not isinstance(v, list)) + " --levels " + " ".join(map(str, args.levels)),
        "model": lm.source, "calibration_problems": len(calib), "eval_problems": len(ev),
        "knowledge_families": KNOWLEDGE.split(","), "knowledge_problems": len(kev),
        "refit": {"problems": batch.n, "tokens": int(batch.lengths.sum()), "sha256": batch.fingerprint()},
        "head_scores": {"cache_key": heads["hashes"]["cache_key"], "seconds": heads.get("seconds"), "mode": heads["mode"]},
        "channel_scores": {"cache_key": channels["hashes"]["cache_key"], "seconds": channels.get("seconds"),
                           "refined_units": channels.get("refined_units"), "group": channels.get("group")},
        "note": "host-measured on this machine's CPU; every artifact timed once per round, rounds interleaved, "
                "median over rounds; invalid artifacts are timed too and flagged (their speed is the runtime's on "
                "those shapes, their numbers are not trusted); llama.cpp Q8_0 (deci architecture for pruned "
                "models), ONNX Runtime fp32 CPU EP",
        "rows": rows, "no_refit": no_refit, "paired": paired,
        "hits": {k: {s: "".join("1" if x else "0" for x in v) for s, v in h.items()} for k, h in hits.items()},
        "table_md": md, "accuracy_md": acc_md, "paired_md": pair_md, "seconds": time.perf_counter() - t_all})


if __name__ == "__main__":
    main()
