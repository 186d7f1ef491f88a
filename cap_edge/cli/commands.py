"""Model commands: eval, score, prune, methods, export, devices."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import CapEdgeError
from .app import DeviceOpt, DtypeOpt, ModelOpt, VerboseOpt, _counts, _fail, _setup_logging, app, format_eval_table


@app.command("eval")
def eval_cmd(
    tasks: str = typer.Option("embedded", help="embedded[:families] | PATH.jsonl | gsm8k:PATH | arc:PATH | strategyqa:PATH"),
    model: Optional[str] = ModelOpt,
    limit: Optional[int] = typer.Option(None, help="problems per family (embedded) or in all (files)"),
    metric: str = typer.Option("mc", help="mc (log-likelihood, acc_norm) | gen (greedy + exact match)"),
    seed: int = typer.Option(0, help="seed of the embedded generators"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="write the full result here"),
    device: str = DeviceOpt, dtype: str = DtypeOpt, verbose: bool = VerboseOpt,
):
    """Evaluate reasoning accuracy (per family: n, chance, 95% CI, gold-answer cross-entropy)."""
    _setup_logging(verbose)
    try:
        from ..backend import TorchBackend
        from ..evaluate import evaluate
        from ..models import load_model
        from ..tasks import load_split

        _counts(limit=limit)
        problems = load_split(tasks, "eval", limit, seed)
        lm = load_model(model, device=device, dtype=dtype)
        result = evaluate(TorchBackend(lm.model, lm.tokenizer), lm.tokenizer, problems, metric=metric)
        typer.echo(format_eval_table(result))
        if json_out:
            from ..io import write_json
            from ..provenance import stamp

            write_json(json_out, {**stamp(), "model": lm.source, "tasks": tasks, "split": "eval", "limit": limit, "seed": seed,
                                  "device": str(lm.device), "dtype": str(lm.model.dtype), **result})
            typer.echo(f"wrote {json_out}")
    except (CapEdgeError, ValueError, OSError) as e:
        _fail(e)


@app.command("score")
def score_cmd(
    out: Path = typer.Option(..., help="directory for head_scores.json and head_scores.png"),
    calib: str = typer.Option("embedded", help="calibration task spec (its calibration split is used)"),
    model: Optional[str] = ModelOpt,
    samples: int = typer.Option(32, help="calibration problems in all"),
    subsets: int = typer.Option(3, help="K disjoint subsets; score = median over subsets"),
    mode: str = typer.Option("exact", help="exact | attribution | hybrid | naive"),
    tokens_per_problem: int = typer.Option(256),
    seconds: Optional[float] = typer.Option(None, help="wall-clock budget; a partial result is saved and resumable"),
    refine_fraction: float = typer.Option(0.25, help="hybrid: share of the exact-scoring cost spent re-scoring heads exactly"),
    force: bool = typer.Option(False, help="recompute even when cached"),
    overwrite: bool = typer.Option(False, help="replace head_scores.json/png in a non-empty --out"),
    distributed: bool = typer.Option(False, "--distributed", help="split exact scoring over torchrun processes"),
    head_group: Optional[int] = typer.Option(None, help="distributed: heads per job (default: all heads of a layer)"),
    device_map: Optional[str] = typer.Option(None, help="place a model too large for one GPU across this node's GPUs "
                                                        "(accelerate: auto | balanced | sequential); with --distributed "
                                                        "run one process per node"),
    seed: int = typer.Option(0), device: str = DeviceOpt, dtype: str = DtypeOpt, verbose: bool = VerboseOpt,
):
    """CAP head scores: loss increase when each attention head is masked, on calibration problems."""
    rank = 0
    if distributed:
        import os

        from ..distributed import init

        rank, _ = init()
        if device == "auto" and device_map is None and __import__("torch").cuda.is_available():
            device = f"cuda:{os.environ.get('LOCAL_RANK', 0)}"
    _setup_logging(verbose)
    from ..config import BudgetConfig, ScoreConfig
    from ..errors import ScoringIncomplete
    from ..io import check_output_dir, write_json
    from ..models import load_model
    from ..report import heatmap_png
    from ..scoring import ranked_units, score_heads
    from ..tasks import calibration_problems

    try:
        _counts(samples=samples, tokens_per_problem=tokens_per_problem, head_group=head_group)
        cfg = ScoreConfig(mode=mode, subsets=subsets, refine_fraction=refine_fraction)
        budget = BudgetConfig(problems=samples, tokens_per_problem=tokens_per_problem, seconds=seconds)
        if rank == 0:
            check_output_dir(out, overwrite, "scores")
        problems = calibration_problems(calib, samples, seed)
        lm = load_model(model, device=device, dtype=dtype, device_map=device_map)
        result = score_heads(lm.model, lm.tokenizer, problems, cfg, budget, force=force, distributed=distributed,
                             head_group=head_group, progress=rank == 0)
        if distributed:
            from ..distributed import shutdown

            shutdown()  # the last collective (gathering the ranks' stats) is behind us
        if result is None:  # a non-zero rank: rank 0 writes the result
            return
        result.update(model=lm.source, calib=calib)
        write_json(out / "head_scores.json", result)
        heatmap_png(result, out / "head_scores.png")
    except ScoringIncomplete as e:
        typer.secho(f"incomplete: {e}", fg=typer.colors.YELLOW, err=True)
        raise typer.Exit(code=3)
    except (CapEdgeError, ValueError, OSError) as e:
        _fail(e)
    ranked = ranked_units(result)
    typer.echo(f"{'cache hit' if result.get('cache_hit') else 'computed'}: {len(ranked)} heads, mode {mode}, "
               f"intact answer CE {result['intact_loss']['all']:.4f}, {result['seconds']:.1f}s")
    typer.echo("most important (layer.head: median Δ CE): " + ", ".join(f"{l}.{h}: {v:+.4f}" for l, h, v in ranked[:5]))
    typer.echo("least important: " + ", ".join(f"{l}.{h}: {v:+.4f}" for l, h, v in ranked[-5:]))
    typer.echo(f"wrote {out / 'head_scores.json'} and {out / 'head_scores.png'}")


@app.command("prune")
def prune_cmd(
    out: Path = typer.Option(..., help="output directory: HF model (safetensors + tokenizer) + sparsity.json"),
    method: str = typer.Option("cap", help="pruning method (see `cap-edge methods`)"),
    sparsity: float = typer.Option(0.5, help="target sparsity in [0, 1) (unstructured: of prunable weights; "
                                            "structured: of all parameters)"),
    pattern: str = typer.Option("unstructured", help="unstructured | 2:4 | 4:8 (N:M fixes sparsity at 1-N/M) | "
                                                     "structured (whole heads and MLP channels removed)"),
    nm_dense: float = typer.Option(0.0, help="N:M: share of prunable parameters kept dense as whole attention/MLP blocks "
                                             "(TensorRT mixes dense and 2:4 layers); effective sparsity (1-share)(1-N/M)"),
    nm_dense_by: str = typer.Option("cap", help="N:M dense blocks chosen by: cap (CAP effect per parameter; cap-wanda, "
                                                "cap-sparsegpt) | depth (the earliest blocks)"),
    min_heads: int = typer.Option(1, help="structured: query heads every layer keeps (0 allows attention-free layers)"),
    scope: str = typer.Option("global", help="structured: global budget, or the same share from each layer"),
    refit: bool = typer.Option(True, help="structured: least-squares refit of o_proj/down_proj after removal"),
    refit_problems: int = typer.Option(256, help="structured: calibration problems the refit sees"),
    scores: Optional[Path] = typer.Option(None, help="head_scores.json from `cap-edge score` (cap methods); computed and cached if absent"),
    model: Optional[str] = ModelOpt,
    calib: str = typer.Option("embedded", help="calibration task spec (Wanda/SparseGPT statistics, CAP scores)"),
    samples: int = typer.Option(32, help="calibration problems"),
    tokens_per_problem: int = typer.Option(256),
    score_mode: str = typer.Option("exact", help="scoring mode when scores are computed: exact | attribution | hybrid"),
    overwrite: bool = typer.Option(False, help="replace a non-empty output directory"),
    seed: int = typer.Option(0), device: str = DeviceOpt, dtype: str = DtypeOpt, verbose: bool = VerboseOpt,
):
    """Prune weights (unstructured, N:M or structured) and write a loadable Hugging Face model directory."""
    _setup_logging(verbose)
    from ..config import BudgetConfig, PruneConfig, ScoreConfig
    from ..io import check_output_dir
    from ..models import load_model
    from ..pruning.run import prune_stage

    try:
        _counts(samples=samples, tokens_per_problem=tokens_per_problem, refit_problems=refit_problems)
        cfg = PruneConfig(method=method, sparsity=sparsity, pattern=pattern, min_heads=min_heads, scope=scope,
                          refit=refit, refit_problems=refit_problems, nm_dense=nm_dense, nm_dense_by=nm_dense_by)
        budget = BudgetConfig(problems=samples, tokens_per_problem=tokens_per_problem)
        score_cfg = ScoreConfig(mode=score_mode)
        check_output_dir(out, overwrite, "prune")
        lm = load_model(model, device=device, dtype=dtype)
        res = prune_stage(lm, cfg, calib=calib, budget=budget, score_cfg=score_cfg, scores_file=scores, seed=seed,
                          out=out, overwrite=overwrite)
    except (CapEdgeError, ValueError, OSError) as e:
        _fail(e)
    report = res.report
    if cfg.structured:
        s = report["sizes"]
        typer.echo(f"{method} structured: removed {report['achieved_sparsity']:.4f} of {report['params_before']:,} parameters "
                   f"(target {cfg.sparsity}); heads per layer {s['num_heads']}; MLP widths {s['intermediate_size']}")
    else:
        typer.echo(f"{method} {pattern}: target {report.get('effective_target', report['target_sparsity']):.4f}, achieved {report['achieved_sparsity']:.4f} "
                   f"over {report['prunable_params']:,} prunable weights in {report['seconds']:.1f}s"
                   + (f"; dense blocks: {', '.join(report['dense_blocks'])}" if report.get("dense_blocks") else ""))
    typer.echo(f"wrote {out}")


@app.command("methods")
def methods_cmd():
    """List the pruning methods."""
    from ..pruning import METHODS

    for m in METHODS.values():
        typer.echo(f"{m.name:16s} {m.doc}")


@app.command("export")
def export_cmd(
    model_dir: Path = typer.Argument(..., help="a (pruned) Hugging Face model directory"),
    fmt: str = typer.Option(..., "--format", help="onnx | gguf | onnx-static | genai (see `cap-edge devices` for profiles)"),
    precision: str = typer.Option(..., help="onnx: fp32|fp16|int8|int4; gguf: f32|f16|q8_0|q4_0; onnx-static: fp32|qdq8|qdq16"),
    out: Path = typer.Option(..., help="output directory (artifact, .zip bundle, manifest.json)"),
    chunk: int = typer.Option(64, help="onnx-static: tokens per prefill call"),
    context: int = typer.Option(1024, help="onnx-static: fixed KV-cache slots"),
    op_table: Optional[str] = typer.Option(None, help="onnx-static: op table to check against (e.g. qnn-htp)"),
    overwrite: bool = typer.Option(False, help="write into a non-empty directory, replacing files of the same name"),
    verbose: bool = VerboseOpt,
):
    """Export to ONNX or GGUF, validate against PyTorch, record sha256/sizes/validation in manifest.json."""
    _setup_logging(verbose)
    from exporters import get_spec

    from ..deploy.export import export_artifact
    from ..io import check_output_dir
    from ..models import resolve_model_dir

    try:
        get_spec(fmt, precision)
        _counts(chunk=chunk, context=context)
        resolve_model_dir(model_dir)  # a clear error for a missing or broken model dir, before any work
        if out.is_dir() and any(out.iterdir()) and not overwrite:
            raise CapEdgeError(f"output directory {out} is not empty (pass --overwrite to write into it)")
        check_output_dir(out, False, "export") if not out.exists() else None
        opts = {"chunk": chunk, "context": context, "op_table": op_table} if fmt == "onnx-static" else None
        art = export_artifact(model_dir, fmt, precision, out, export_options=opts, overwrite=overwrite)
    except (CapEdgeError, OSError) as e:
        _fail(e)
    v = art.validation
    typer.echo(f"{art.path}: {art.bytes / 1e6:.1f} MB raw, {art.compressed_bytes / 1e6:.1f} MB zipped; "
               f"{v['metric']} {v[v['metric']]:.4g} (tol {v['tolerance']}), mean KL {v['mean_kl']:.4g}, top-1 "
               f"{v['top1_agreement']:.3f} (decisive positions {v['top1_agreement_decisive']:.3f})"
               + (f", greedy 32 equal: {v['greedy_equal']}" if "greedy_equal" in v else "") + " -> valid")


@app.command("devices")
def devices_cmd():
    """List the built-in device profiles."""
    from device_profiles import detect, list_profiles, load_profile

    for name in list_profiles():
        p = load_profile(name)
        present, why = detect(p)
        typer.echo(f"{name:15s} {p.prune.method} {p.prune.pattern:12s} -> {', '.join(p.export.outputs):32s} "
                   f"budget {p.hardware.memory_budget_mb:.0f} MB, {p.hardware.memory_bandwidth_gbs} GB/s; "
                   f"{'present' if present else 'absent'} ({why})")
        typer.echo(f"{'':15s} {p.description}")

