"""Deployment commands: build, bench, gate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ..errors import CapEdgeError
from .app import ModelOpt, VerboseOpt, _counts, _fail, _setup_logging, app


@app.command("build")
def build_cmd(
    device: str = typer.Option(..., help="profile name (see `cap-edge devices`) or a .toml path"),
    model: Optional[str] = ModelOpt,
    calib: str = typer.Option("embedded", help="calibration task spec"),
    calib_draw: int = typer.Option(0, help="which subset of the calibration split (0: the first; others are disjoint "
                                           "from the evaluation split too)"),
    eval_tasks: str = typer.Option("embedded", "--eval-tasks", help="held-out evaluation task spec"),
    eval_per_family: Optional[int] = typer.Option(None, help="held-out problems per family for every measure "
                                                             "(default: the profile's [search] sizes)"),
    search: Optional[bool] = typer.Option(None, "--search/--no-search", help="evaluate the profile's candidate grid and "
                                          "ship the best (default: the profile's [search] enabled); --no-search: its [prune] config"),
    method: Optional[str] = typer.Option(None, help="override the profile's pruning method"),
    sparsity: Optional[float] = typer.Option(None, help="override the profile's sparsity"),
    pattern: Optional[str] = typer.Option(None, help="override the profile's pattern"),
    budget_problems: Optional[int] = typer.Option(None, help="override the profile's calibration problems"),
    budget_tokens: Optional[int] = typer.Option(None, help="override tokens per calibration problem"),
    budget_seconds: Optional[float] = typer.Option(None, help="override the scoring time budget"),
    score_mode: Optional[str] = typer.Option(None, help="exact | attribution | hybrid (default: the profile's budget)"),
    prompt_tokens: int = typer.Option(64), gen_tokens: int = typer.Option(32), runs: int = typer.Option(3),
    out: Optional[Path] = typer.Option(None, help="output directory (default: builds/DEVICE)"),
    overwrite: bool = typer.Option(False, help="replace the contents of a non-empty output directory"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the resolved plan and do nothing else"),
    verbose: bool = VerboseOpt,
):
    """The whole pipeline for one device: calibrate, score, prune, export, validate, evaluate, measure."""
    _setup_logging(verbose)
    from device_profiles import load_profile

    from ..config import BuildConfig, replace
    from ..deploy.build import build, plan

    try:
        _counts(budget_problems=budget_problems, budget_tokens=budget_tokens)
        prof = load_profile(device)
        pr = prof.prune
        pr = replace(pr, method=method or pr.method, sparsity=pr.sparsity if sparsity is None else sparsity,
                     pattern=pattern or pr.pattern)  # keeps the profile's other prune settings
        b = prof.budget
        b = replace(b, problems=b.problems if budget_problems is None else budget_problems,
                    tokens_per_problem=b.tokens_per_problem if budget_tokens is None else budget_tokens,
                    seconds=b.seconds if budget_seconds is None else budget_seconds)
        cfg = BuildConfig(profile=prof, out=str(out or Path("builds") / prof.name), model=model, calib=calib,
                          calib_draw=calib_draw, eval_tasks=eval_tasks, eval_per_family=eval_per_family, prune=pr, budget=b,
                          score_mode=score_mode, prompt_tokens=prompt_tokens, gen_tokens=gen_tokens, runs=runs,
                          overwrite=overwrite, search=search)
        if dry_run:
            typer.echo(json.dumps(plan(cfg), indent=2, default=str))
            return
        build(cfg, log_fn=lambda s: typer.echo(s, err=True))
    except (CapEdgeError, OSError) as e:
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
    verbose: bool = VerboseOpt,
):
    """Dense vs pruned artifacts of a build, side by side; optional regression gate."""
    _setup_logging(verbose)
    from ..deploy.bench import bench
    from ..gate import Tolerances, read_json_input
    from ..io import write_json
    from ..report import bench_tables, write_bench_report

    try:
        _counts(runs=runs, prompt_tokens=prompt_tokens, gen_tokens=gen_tokens, eval_per_family=eval_per_family)
        tol = Tolerances(tol_accuracy, tol_latency, tol_memory, tol_size)
        base = read_json_input(baseline, "baseline") if baseline else None
        sweep_data = read_json_input(sweep, "sweep", "summary", "a pruning sweep (benchmarks/results/pruning.json)") if sweep else None
        res = bench(build_dir, runs=runs, prompt_tokens=prompt_tokens, gen_tokens=gen_tokens, eval_per_family=eval_per_family)
        typer.echo(bench_tables(res))
        md, html_path = write_bench_report(res, build_dir, build_dir, sweep_data)
        typer.echo(f"wrote {md} and {html_path}")
        if json_out:
            from ..provenance import stamp

            write_json(json_out, {**stamp(), **res})
        if update_baseline:
            write_json(update_baseline, res)
            typer.echo(f"baseline written to {update_baseline}")
    except (CapEdgeError, OSError) as e:
        _fail(e)
    if base is not None:
        _gate(res, base, str(baseline), tol)


def _gate(res: dict, base: dict, where: str, tol) -> None:
    from ..gate import GateMismatch, compare, format_regressions

    try:
        regs = compare(res, base, tol)
    except GateMismatch as e:
        _fail(e, code=4)
    if regs:
        typer.echo(f"REGRESSION against {where}:")
        typer.echo(format_regressions(regs))
        raise typer.Exit(code=1)
    typer.echo(f"no regression against {where}")


@app.command("gate")
def gate_cmd(
    result: Path = typer.Argument(..., help="a bench result JSON"),
    baseline: Path = typer.Option(..., help="the stored baseline JSON"),
    tol_accuracy: float = typer.Option(0.01), tol_latency: float = typer.Option(0.10),
    tol_memory: float = typer.Option(0.05), tol_size: float = typer.Option(0.01),
):
    """Compare a stored bench result with a baseline. Exit 0: no regression; 1: a regression (table
    printed); 2: unreadable input; 4: result and baseline cannot be compared (device, artifacts,
    metrics differ)."""
    from ..gate import Tolerances, read_json_input

    try:
        cur, base = read_json_input(result, "result"), read_json_input(baseline, "baseline")
    except CapEdgeError as e:
        _fail(e)
    _gate(cur, base, str(baseline), Tolerances(tol_accuracy, tol_latency, tol_memory, tol_size))
