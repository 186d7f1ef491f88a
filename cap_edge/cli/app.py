"""The ``cap-edge`` command. Flags become the same config objects the Python API takes.

Exit codes: 0 success; 1 ``gate``/``bench --baseline`` found a regression; 2 bad input or a failed
stage (a clear message, never a traceback); 3 scoring stopped at its time budget (the partial
result is kept and resumes); 4 ``gate`` cannot judge: the result and the baseline differ in device,
artifact set or metric set.
"""

from __future__ import annotations

import logging

import typer

from ..errors import CapEdgeError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Causal Attribution Pruning (CAP) of language models for edge runtimes.")

ModelOpt = typer.Option(None, "--model", "-m", help="HF model dir or .gguf file; default: embedded SmolLM2-135M-Instruct")
DeviceOpt = typer.Option("auto", help="auto | cpu | cuda[:N] (auto picks CUDA when present)")
DtypeOpt = typer.Option("auto", help="auto | fp32 | fp16 | bf16 (auto: bf16/fp16 on CUDA, fp32 on CPU)")
VerboseOpt = typer.Option(False, "--verbose", "-v")


@app.callback()
def _root() -> None:
    """Causal Attribution Pruning (CAP) of language models for edge runtimes."""


def _fail(e: Exception, code: int = 2) -> None:
    typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=code)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def _counts(**flags) -> None:
    """Every count flag must be an integer >= 1 (checked before any work)."""
    for name, v in flags.items():
        if v is not None and v < 1:
            raise CapEdgeError(f"--{name.replace('_', '-')}: expected an integer >= 1, got {v}")


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


