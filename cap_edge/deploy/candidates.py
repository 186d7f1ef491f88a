"""One build candidate through export, validation, the runtime and the clock: the row the search
and the report compare. Accuracy, answer CE and fidelity to the dense model are measured through
the artifact's own runtime (what the device runs), speed host-measured or roofline-estimated."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import CapEdgeError, ExportError, ValidationError
from .estimate import memory_estimate_mb, param_count, roofline


def assess_artifact(entry: dict, tokenizer, evalset, ref, runtime_spec) -> dict:
    """Accuracy (knowledge families), answer CE (suite), KL / top-1 / perplexity / retention /
    samples through the artifact's runtime."""
    from ..assess import score_runtime
    from .export import load_artifact_runtime

    rt = load_artifact_runtime(entry, runtime_spec, tokenizer.eos_token_id)
    return score_runtime(rt, tokenizer, evalset, ref)


def candidate_row(cand, model_dir: Path, out_dir: Path, ctx, say) -> dict:
    """Export ``cand`` (search.Candidate) from ``model_dir`` into ``out_dir``, validate, assess,
    time. ``ctx``: the build's shared state (profile, tokenizer, eval set, reference, options)."""
    from exporters import get_spec

    from ..models import load_config
    from .export import export_artifact

    fmt, prec = cand.output.rsplit(":", 1)
    spec = get_spec(fmt, prec)
    row = {"name": cand.name, "output": cand.output, "dense": cand.prune is None, "baseline": cand.baseline,
           "method": cand.prune.method if cand.prune else "none", "pattern": cand.prune.pattern if cand.prune else "dense",
           "target_sparsity": cand.prune.target_sparsity if cand.prune else 0.0}
    config = load_config(model_dir)
    params = param_count(config)
    row["params"] = params
    row["memory_mb"] = memory_estimate_mb(config, spec, ctx.profile.runtime.context_length, params)["total_mb"]
    say(f"  {cand.name} {cand.output}: export + validate")
    try:
        art = export_artifact(model_dir, fmt, prec, out_dir, ctx.profile.runtime, overwrite=True,
                              export_options=ctx.export_options(fmt))
        row["valid"] = True
    except ExportError as e:  # this model cannot be written in this format (e.g. structured Gemma 3 as GGUF)
        say(f"  {cand.name} {cand.output}: not exportable: {e}")
        return {**row, "valid": False, "exportable": False, "invalid": str(e), "acc": float("nan"), "decode_tok_s": 0.0,
                "ttft_s": float("inf"), "mb": float("inf"), "acc_ci": [float("nan")] * 2, "answer_ce": float("nan"),
                "kl": float("nan"), "top1": float("nan"), "retention": float("nan"), "ppl": float("nan"), "n": 0,
                "path": str(out_dir), "entry": None, "host": None, "estimated": None, "speed_label": "-"}
    except ValidationError as e:
        from exporters.bundle import resolve

        import json

        entries = json.loads((out_dir / "manifest.json").read_text())["artifacts"]
        art_entry = next(resolve(a, out_dir) for a in entries if a["format"] == fmt and a["precision"] == prec)
        row.update(valid=False, invalid=str(e))
        return _finish(row, art_entry, ctx, say, spec, params)
    return _finish(row, art.as_dict(), ctx, say, spec, params)


def check_op_coverage(export_cfg, coverage: dict | None, path, say) -> None:
    """Fail or warn (per the profile's [export] unsupported_ops) when a graph has ops the target
    execution provider's table lacks."""
    import warnings

    if not coverage:
        return
    missing = {op: v["count"] for g in coverage.values() for op, v in g["unsupported"].items()}
    if not missing:
        say(f"  op coverage ({export_cfg.op_table}): every op supported")
        return
    msg = (f"{path}: ops not in the {export_cfg.op_table} table: "
           + ", ".join(f"{op} x{n}" for op, n in sorted(missing.items())))
    if export_cfg.unsupported_ops == "fail":
        raise CapEdgeError(msg)
    warnings.warn(msg, RuntimeWarning, stacklevel=2)
    say(f"  warning: {msg}")


def _finish(row: dict, entry: dict, ctx, say, spec, params: int) -> dict:
    from .export import measure_artifact

    # before any measuring, and on the invalid-artifact path too: a graph the target EP cannot run
    check_op_coverage(ctx.profile.export, (entry.get("metadata") or {}).get("op_coverage"), entry["path"], say)
    row.update(path=entry["path"], mb=entry["bytes"] / 1e6, zip_mb=entry["compressed_bytes"] / 1e6,
               validation={k: entry["validation"].get(k) for k in ("metric", "mean_kl", "top1_agreement_decisive",
                                                                   "passed", "greedy_equal")},
               entry=entry)
    say(f"  {row['name']} {row['output']}: accuracy, answer CE, fidelity through {spec.runtime}")
    try:
        q = assess_artifact(entry, ctx.tokenizer, ctx.evalset, ctx.ref, ctx.profile.runtime)
    except CapEdgeError as e:
        raise CapEdgeError(f"{row['name']} {row['output']}: assessing the artifact failed: {e}") from e
    row.update(acc=q["knowledge"]["acc"], acc_ci=q["knowledge"]["ci95"], n=q["knowledge"]["n"],
               chance=q["knowledge"]["chance"], answer_ce=q["suite"]["answer_ce"], suite_acc=q["suite"]["acc"],
               kl=q["fidelity"]["kl_mean"], kl_p99=q["fidelity"]["kl_p99"], top1=q["fidelity"]["top1_agreement"],
               ppl=q["fidelity"]["ppl"], retention=q["fidelity"]["retention"]["share"],
               retention_n=q["fidelity"]["retention"]["dense_correct"], samples=q["samples"], hits=q["hits"],
               knowledge_families=q["knowledge_families"])
    host = ctx.profile.detector == "host"
    say(f"  {row['name']} {row['output']}: timing ({'host-measured' if host else 'host-measured + estimated'})")
    lat = measure_artifact(entry, ctx.prompt_tokens, ctx.gen_tokens, ctx.runs, ctx.profile.runtime,
                           ctx.tokenizer.eos_token_id, vocab=len(ctx.tokenizer))
    est = roofline(ctx.profile.hardware, params, entry["bytes"], ctx.prompt_tokens, row["pattern"])
    row.update(host={"ttft_s": lat["ttft_s"]["median"], "decode_tok_s": lat["decode_tok_s"]["median"],
                     "peak_rss_mb": lat["peak_rss_mb"], "label": "host-measured"},
               estimated=est, speed_label="host-measured" if host else "estimated")
    # the figures the targets are judged on: the host's when the host is the device, else the roofline's
    row["decode_tok_s"] = row["host"]["decode_tok_s"] if host else est["decode_tok_s_max"]
    row["ttft_s"] = row["host"]["ttft_s"] if host else est["ttft_s_min"]
    return row


def copy_model(src: Path, dest: Path) -> Path:
    """The shipped model's Hugging Face directory into the build (without cache bookkeeping)."""
    import shutil

    from ..io import DIGESTS_FILE

    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns(DIGESTS_FILE))
    for root, dirs, files in os.walk(dest):
        for n in dirs:
            os.chmod(os.path.join(root, n), 0o755)
        for n in files:
            os.chmod(os.path.join(root, n), 0o644)
    return dest
