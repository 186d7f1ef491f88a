"""The ``cap-edge`` command. Flags become the same config objects the Python API takes."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Optional

import typer

from .errors import CapEdgeError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Causal Attribution Pruning (CAP) of language models for edge runtimes.")

ModelOpt = typer.Option(None, "--model", "-m", help="HF model dir or .gguf file; default: embedded SmolLM2-135M-Instruct")
DeviceOpt = typer.Option("auto", help="auto | cpu | cuda[:N] (auto picks CUDA when present)")
DtypeOpt = typer.Option("auto", help="auto | fp32 | fp16 | bf16 (auto: bf16/fp16 on CUDA, fp32 on CPU)")


@app.callback()
def _root() -> None:
    """Causal Attribution Pruning (CAP) of language models for edge runtimes."""


def _fail(e: Exception) -> None:
    typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def format_eval_table(result: dict) -> str:
    rows = [("family", "n", result["metric"], "95% CI", "chance", "answer CE")]
    for name, r in list(result["families"].items()) + [("OVERALL", result["overall"])]:
        lo, hi = r["ci95"]
        mark = " *" if r["above_chance"] else ""
        rows.append((name, str(r["n"]), f"{r['acc']:.3f}{mark}", f"[{lo:.3f}, {hi:.3f}]", f"{r['chance']:.3f}", f"{r['answer_ce']:.3f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("(* = 95% CI lies above chance)")
    return "\n".join(lines)


@app.command("eval")
def eval_cmd(
    tasks: str = typer.Option("embedded", help="embedded[:families] | PATH.jsonl | gsm8k:PATH | arc:PATH | strategyqa:PATH"),
    model: Optional[str] = ModelOpt,
    limit: Optional[int] = typer.Option(None, help="problems per family (embedded) or in all (files)"),
    metric: str = typer.Option("mc", help="mc (log-likelihood, acc_norm) | gen (greedy + exact match)"),
    seed: int = typer.Option(0, help="seed of the embedded generators"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="write the full result here"),
    device: str = DeviceOpt,
    dtype: str = DtypeOpt,
    verbose: bool = typer.Option(False, "--verbose", "-v"),
):
    """Evaluate reasoning accuracy (per family: n, chance, 95% CI, gold-answer cross-entropy)."""
    _setup_logging(verbose)
    try:
        from .evaluate import TorchBackend, evaluate
        from .models import load_model
        from .tasks import load_split

        problems = load_split(tasks, "eval", limit, seed)
        lm = load_model(model, device=device, dtype=dtype)
        result = evaluate(TorchBackend(lm.model, lm.tokenizer), lm.tokenizer, problems, metric=metric)
    except (CapEdgeError, ValueError) as e:
        _fail(e)
    typer.echo(format_eval_table(result))
    if json_out:
        from .io import write_json

        write_json(json_out, {"model": lm.source, "tasks": tasks, "split": "eval", "limit": limit, "seed": seed,
                              "device": str(lm.device), "dtype": str(lm.model.dtype), **result})
        typer.echo(f"wrote {json_out}")


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
    refine_fraction: float = typer.Option(0.2, help="hybrid: share of heads re-scored exactly"),
    force: bool = typer.Option(False, help="recompute even when cached"),
    distributed: bool = typer.Option(False, "--distributed", help="split exact scoring over torchrun processes"),
    head_group: Optional[int] = typer.Option(None, help="distributed: heads per job (default: all heads of a layer)"),
    device_map: Optional[str] = typer.Option(None, help="place a model too large for one GPU across this node's GPUs "
                                                        "(accelerate: auto | balanced | sequential); with --distributed "
                                                        "run one process per node"),
    seed: int = typer.Option(0),
    device: str = DeviceOpt,
    dtype: str = DtypeOpt,
    verbose: bool = typer.Option(False, "--verbose", "-v"),
):
    """CAP head scores: loss increase when each attention head is masked, on calibration problems."""
    rank = 0
    if distributed:
        import os

        from .distributed import init

        rank, _ = init()
        if device == "auto" and device_map is None and __import__("torch").cuda.is_available():
            device = f"cuda:{os.environ.get('LOCAL_RANK', 0)}"
    _setup_logging(verbose)
    from .config import BudgetConfig, ScoreConfig
    from .errors import ScoringIncomplete
    from .io import write_json
    from .models import load_model
    from .scoring import heatmap_png, ranked_heads, score_heads
    from .tasks import calibration_problems

    try:
        cfg = ScoreConfig(mode=mode, subsets=subsets, refine_fraction=refine_fraction)
        budget = BudgetConfig(problems=samples, tokens_per_problem=tokens_per_problem, seconds=seconds)
        problems = calibration_problems(calib, samples, seed)
        lm = load_model(model, device=device, dtype=dtype, device_map=device_map)
        result = score_heads(lm.model, lm.tokenizer, problems, cfg, budget, force=force, distributed=distributed, head_group=head_group,
                             progress=rank == 0)
        if distributed:
            from .distributed import shutdown

            shutdown()  # the last collective (gathering the ranks' stats) is behind us
        if result is None:  # a non-zero rank: rank 0 writes the result
            return
    except ScoringIncomplete as e:
        typer.secho(f"incomplete: {e}", fg=typer.colors.YELLOW, err=True)
        raise typer.Exit(code=3)
    except (CapEdgeError, ValueError) as e:
        _fail(e)
    result["model"] = lm.source
    result["calib"] = calib
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "head_scores.json", result)
    heatmap_png(result, out / "head_scores.png")
    ranked = ranked_heads(result)
    typer.echo(f"{'cache hit' if result.get('cache_hit') else 'computed'}: {len(ranked)} heads, mode {mode}, "
               f"intact answer CE {result['intact_loss']['all']:.4f}, {result['seconds']:.1f}s")
    typer.echo("most important (layer.head: median Δ CE): " + ", ".join(f"{l}.{h}: {v:+.4f}" for l, h, v in ranked[:5]))
    typer.echo("least important: " + ", ".join(f"{l}.{h}: {v:+.4f}" for l, h, v in ranked[-5:]))
    typer.echo(f"wrote {out / 'head_scores.json'} and {out / 'head_scores.png'}")


@app.command("prune")
def prune_cmd(
    out: Path = typer.Option(..., help="output directory: HF model (safetensors + tokenizer) + sparsity.json"),
    method: str = typer.Option("cap", help="magnitude | wanda | sparsegpt | cap | cap-wanda"),
    sparsity: float = typer.Option(0.5, help="target sparsity in [0, 1) (unstructured: of prunable weights; "
                                            "structured: of all parameters)"),
    pattern: str = typer.Option("unstructured", help="unstructured | 2:4 | 4:8 (N:M fixes sparsity at 1-N/M) | "
                                                     "structured (whole heads and MLP channels removed)"),
    min_heads: int = typer.Option(1, help="structured: query heads every layer keeps (0 allows attention-free layers)"),
    scope: str = typer.Option("global", help="structured: global budget, or the same share from each layer"),
    refit: bool = typer.Option(True, help="structured: least-squares refit of o_proj/down_proj after removal"),
    refit_problems: int = typer.Option(256, help="structured: calibration problems the refit sees"),
    scores: Optional[Path] = typer.Option(None, help="head_scores.json from `cap-edge score` (cap methods); computed and cached if absent"),
    model: Optional[str] = ModelOpt,
    calib: str = typer.Option("embedded", help="calibration task spec (Wanda/SparseGPT statistics, CAP scores)"),
    samples: int = typer.Option(32, help="calibration problems"),
    tokens_per_problem: int = typer.Option(256),
    overwrite: bool = typer.Option(False, help="replace a non-empty output directory"),
    seed: int = typer.Option(0),
    device: str = DeviceOpt,
    dtype: str = DtypeOpt,
    verbose: bool = typer.Option(False, "--verbose", "-v"),
):
    """Prune weights (unstructured or N:M) and write a loadable Hugging Face model directory."""
    _setup_logging(verbose)
    from .config import BudgetConfig, PruneConfig, ScoreConfig
    from .io import write_json
    from .models import load_model
    from .prune_io import save_pruned
    from .pruning import get_method, prune_model, refit_batch
    from .scoring import build_calib_batch, score_channels, score_heads
    from .tasks import calibration_problems

    try:
        cfg = PruneConfig(method=method, sparsity=sparsity, pattern=pattern, min_heads=min_heads, scope=scope,
                          refit=refit, refit_problems=refit_problems)
        if out.exists() and any(out.iterdir()) and not overwrite:
            raise CapEdgeError(f"output directory {out} is not empty (pass --overwrite to replace it)")
        budget = BudgetConfig(problems=samples, tokens_per_problem=tokens_per_problem)
        spec = get_method(method)
        lm = load_model(model, device=device, dtype=dtype)
        problems = calibration_problems(calib, samples, seed)
        pad = lm.tokenizer.pad_token_id or 0
        if cfg.structured and cfg.refit:  # the refit's larger batch is the only one pruning uses
            batch = refit_batch(lm.tokenizer, calib, cfg, tokens_per_problem, seed)
        else:
            batch = build_calib_batch(lm.tokenizer, problems, 3, budget, pad_id=pad)
        head_scores, scores_ref = None, None
        if spec.uses_heads:
            if scores is not None:
                if not scores.is_file():
                    raise CapEdgeError(f"scores file not found: {scores}")
                head_scores = json.loads(scores.read_text())
                scores_ref = str(scores)
            else:
                head_scores = score_heads(lm.model, lm.tokenizer, problems, ScoreConfig(), budget)
                scores_ref = f"cache:{head_scores['hashes']['cache_key']}"
        channel_scores = None
        if cfg.structured and spec.uses_heads:
            channel_scores = score_channels(lm.model, lm.tokenizer, problems, ScoreConfig(), budget,
                                            group=cfg.channel_group, refine_fraction=cfg.channel_refine)
        report = prune_model(lm.model, cfg, batch, head_scores, channel_scores=channel_scores)
        save_pruned(lm.model, lm.tokenizer, out, report, {
            "model": lm.source, "calibration": {"spec": calib, "problems": batch.n, "hash": batch.fingerprint()},
            "head_scores": scores_ref,
            "channel_scores": channel_scores["hashes"]["cache_key"] if channel_scores else None}, overwrite=overwrite, source_dir=lm.path)
    except (CapEdgeError, ValueError) as e:
        _fail(e)
    if cfg.structured:
        s = report["sizes"]
        typer.echo(f"{method} structured: removed {report['achieved_sparsity']:.4f} of {report['params_before']:,} parameters "
                   f"(target {cfg.sparsity}); heads per layer {s['num_heads']}; MLP widths {s['intermediate_size']}")
    else:
        typer.echo(f"{method} {pattern}: target {report['target_sparsity']:.4f}, achieved {report['achieved_sparsity']:.4f} "
                   f"over {report['prunable_params']:,} prunable weights in {report['seconds']:.1f}s")
    typer.echo(f"wrote {out}")


@app.command("export")
def export_cmd(
    model_dir: Path = typer.Argument(..., help="a (pruned) Hugging Face model directory"),
    fmt: str = typer.Option(..., "--format", help="onnx | gguf | onnx-static (fixed-shape prefill/decode, QDQ)"),
    precision: str = typer.Option(..., help="onnx: fp32|fp16|int8|int4; gguf: f32|f16|q8_0|q4_0; onnx-static: fp32|qdq8|qdq16"),
    out: Path = typer.Option(..., help="output directory (artifact, .zip bundle, manifest.json)"),
    chunk: int = typer.Option(64, help="onnx-static: tokens per prefill call"),
    context: int = typer.Option(1024, help="onnx-static: fixed KV-cache slots"),
    op_table: Optional[str] = typer.Option(None, help="onnx-static: op table to check against (e.g. qnn-htp)"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
):
    """Export to ONNX or GGUF, validate against PyTorch, record sha256/sizes/validation in manifest.json."""
    _setup_logging(verbose)
    from .pipeline import export_artifact

    try:
        if not (model_dir / "config.json").is_file():
            raise CapEdgeError(f"{model_dir} is not a Hugging Face model directory (config.json missing)")
        opts = {"chunk": chunk, "context": context, "op_table": op_table} if fmt == "onnx-static" else None
        art = export_artifact(model_dir, fmt, precision, out, export_options=opts)
    except CapEdgeError as e:
        _fail(e)
    v = art.validation
    typer.echo(f"{art.path}: {art.bytes / 1e6:.1f} MB raw, {art.compressed_bytes / 1e6:.1f} MB zipped; "
               f"{v['metric']} {v[v['metric']]:.4g} (tol {v['tolerance']}), mean KL {v['mean_kl']:.4g}, top-1 {v['top1_agreement']:.3f} (decisive positions {v['top1_agreement_decisive']:.3f})"
               + (f", greedy 32 equal: {v['greedy_equal']}" if "greedy_equal" in v else "") + " -> valid")


@app.command("devices")
def devices_cmd():
    """List the built-in device profiles."""
    from device_profiles import detect, list_profiles, load_profile

    for name in list_profiles():
        p = load_profile(name)
        present, why = detect(p)
        formats = ", ".join(f"{f}:{pr}" for f in p.export.formats
                            for pr in (p.export.onnx_precisions if f == "onnx" else p.export.gguf_precisions))
        typer.echo(f"{name:15s} {p.prune.method} {p.prune.pattern:12s} -> {formats:22s} "
                   f"budget {p.hardware.memory_budget_mb:.0f} MB, {p.hardware.memory_bandwidth_gbs} GB/s; "
                   f"{'present' if present else 'absent'} ({why})")
        typer.echo(f"{'':15s} {p.description}")


@app.command("build")
def build_cmd(
    device: str = typer.Option(..., help="profile name (see `cap-edge devices`) or a .toml path"),
    model: Optional[str] = ModelOpt,
    calib: str = typer.Option("embedded", help="calibration task spec"),
    eval_tasks: str = typer.Option("embedded", "--eval-tasks", help="held-out evaluation task spec"),
    eval_per_family: int = typer.Option(10, help="held-out problems per family (embedded) or in all"),
    method: Optional[str] = typer.Option(None, help="override the profile's pruning method"),
    sparsity: Optional[float] = typer.Option(None, help="override the profile's sparsity"),
    pattern: Optional[str] = typer.Option(None, help="override the profile's pattern"),
    budget_problems: Optional[int] = typer.Option(None, help="override the profile's calibration problems"),
    budget_tokens: Optional[int] = typer.Option(None, help="override tokens per calibration problem"),
    budget_seconds: Optional[float] = typer.Option(None, help="override the scoring time budget"),
    score_mode: str = typer.Option("exact", help="exact | attribution | hybrid"),
    prompt_tokens: int = typer.Option(64), gen_tokens: int = typer.Option(32), runs: int = typer.Option(3),
    out: Optional[Path] = typer.Option(None, help="output directory (default: builds/DEVICE)"),
    overwrite: bool = typer.Option(False),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the resolved plan and do nothing else"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
):
    """The whole pipeline for one device: calibrate, score, prune, export, validate, evaluate, measure."""
    _setup_logging(verbose)
    from device_profiles import load_profile

    from .config import BudgetConfig, replace
    from .pipeline import BuildConfig, build, plan

    try:
        prof = load_profile(device)
        pr = prof.prune
        pr = replace(pr, method=method or pr.method, sparsity=pr.sparsity if sparsity is None else sparsity,
                     pattern=pattern or pr.pattern)  # keeps the profile's other prune settings
        b = prof.budget
        b = BudgetConfig(problems=budget_problems or b.problems, tokens_per_problem=budget_tokens or b.tokens_per_problem,
                         seconds=b.seconds if budget_seconds is None else budget_seconds)
        cfg = BuildConfig(profile=prof, out=str(out or Path("builds") / prof.name), model=model, calib=calib,
                          eval_tasks=eval_tasks, eval_per_family=eval_per_family, prune=pr, budget=b,
                          score_mode=score_mode, prompt_tokens=prompt_tokens, gen_tokens=gen_tokens, runs=runs,
                          overwrite=overwrite)
        if dry_run:
            typer.echo(json.dumps(plan(cfg), indent=2, default=str))
            return
        manifest = build(cfg, log_fn=lambda s: typer.echo(s, err=True))
    except CapEdgeError as e:
        _fail(e)
    typer.echo((Path(cfg.out) / "report.md").read_text())
    typer.echo(f"wrote {cfg.out}/manifest.json and report.md")


@app.command("bench")
def bench_cmd(
    build_dir: Path = typer.Argument(..., help="a directory written by `cap-edge build`"),
    runs: int = typer.Option(5, help="interleaved repetitions (median, min, max reported)"),
    prompt_tokens: int = typer.Option(64), gen_tokens: int = typer.Option(32),
    eval_per_family: Optional[int] = typer.Option(None, help="held-out problems per family (default: the build's)"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="write the result here"),
    baseline: Optional[Path] = typer.Option(None, help="compare with this stored result; exit 1 on regression"),
    update_baseline: Optional[Path] = typer.Option(None, help="write this run as the new baseline"),
    tol_accuracy: float = typer.Option(0.01, help="accuracy drop allowed beyond the baseline's CI half-width"),
    tol_latency: float = typer.Option(0.10), tol_memory: float = typer.Option(0.05), tol_size: float = typer.Option(0.01),
    sweep: Optional[Path] = typer.Option(None, help="pruning sweep JSON (benchmarks/results/pruning.json) to plot"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
):
    """Dense vs pruned artifacts of a build, side by side; optional regression gate."""
    _setup_logging(verbose)
    from .gate import Tolerances
    from .io import write_json
    from .pipeline import bench
    from .report import BENCH_HEAD, RATIO_HEAD, _bench_rows, _md_table, _ratio_rows, write_bench_report

    try:
        res = bench(build_dir, runs=runs, prompt_tokens=prompt_tokens, gen_tokens=gen_tokens, eval_per_family=eval_per_family)
    except CapEdgeError as e:
        _fail(e)
    typer.echo(_md_table(BENCH_HEAD, _bench_rows(res)))
    typer.echo("\nratios pruned/dense (host-measured):")
    typer.echo(_md_table(RATIO_HEAD, _ratio_rows(res)))
    md, html_path = write_bench_report(res, build_dir, build_dir, json.loads(sweep.read_text()) if sweep else None)
    typer.echo(f"wrote {md} and {html_path}")
    if json_out:
        write_json(json_out, res)
    if update_baseline:
        write_json(update_baseline, res)
        typer.echo(f"baseline written to {update_baseline}")
    if baseline:
        gate_cmd_impl(res, baseline, Tolerances(tol_accuracy, tol_latency, tol_memory, tol_size))


def gate_cmd_impl(res: dict, baseline: Path, tol) -> None:
    from .gate import compare, format_regressions

    if not baseline.is_file():
        _fail(CapEdgeError(f"baseline file not found: {baseline}"))
    regs = compare(res, json.loads(baseline.read_text()), tol)
    if regs:
        typer.echo(f"REGRESSION against {baseline}:")
        typer.echo(format_regressions(regs))
        raise typer.Exit(code=1)
    typer.echo(f"no regression against {baseline}")


@app.command("gate")
def gate_cmd(
    result: Path = typer.Argument(..., help="a bench result JSON"),
    baseline: Path = typer.Option(..., help="the stored baseline JSON"),
    tol_accuracy: float = typer.Option(0.01), tol_latency: float = typer.Option(0.10),
    tol_memory: float = typer.Option(0.05), tol_size: float = typer.Option(0.01),
):
    """Compare a stored bench result with a baseline; exit 1 with a table of what regressed."""
    from .gate import Tolerances

    if not result.is_file():
        _fail(CapEdgeError(f"result file not found: {result}"))
    gate_cmd_impl(json.loads(result.read_text()), baseline, Tolerances(tol_accuracy, tol_latency, tol_memory, tol_size))


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
