"""Bad input, interruptions and damaged caches, tried as a careless or hostile user would: one
``Probe`` each, run in-process on the tiny random Llama. Shared by ``tests/test_bad_input.py`` (one
test per probe) and ``benchmarks/robustness.py`` (the table of outcomes); the probes themselves are in
``probes_list.PROBES``.

Each probe prepares its files in a fresh folder and returns what to run (CLI arguments, or a
Python callable for what a shell cannot do, e.g. an interrupt mid-export). The outcome records the
exit code, the first line of the message, and two verdicts: **silent wrong** (exit 0 where the
probe expects a refusal, or a result that is not what was asked) and **data lost** (a protected file
changed or vanished, or a half-written file under a final name).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from typer.testing import CliRunner


@dataclass
class Setup:
    args: list[str] | None = None  # CLI arguments, or
    call: Callable[[], object] | None = None  # a Python call (returns anything; raising = failure)
    protect: list[Path] = field(default_factory=list)  # files that must stay byte-identical
    absent: list[Path] = field(default_factory=list)  # paths that must not exist afterwards (no half-written output)
    check: Callable[[], str | None] | None = None  # extra verdict on the result: None = fine, else what is wrong
    patch: contextlib.AbstractContextManager | None = None
    manifest_check: Path | None = None  # a build manifest that must say status failed, with stopped_at


@dataclass(frozen=True)
class Probe:
    name: str
    category: str
    expect_code: int  # 0 = handled (e.g. a damaged cache rebuilt with a warning), 1, 2 or 4 = refused
    expect_msg: str  # regex the output must contain
    setup: Callable[[Path], Setup]


def _digest(p: Path) -> str | None:
    return hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None


def run(probe: Probe, work: Path) -> dict:
    """Run one probe in ``work`` (a fresh folder); the outcome as a dict."""
    from cap_edge.cli import app

    s = probe.setup(work)
    before = {p: _digest(p) for p in s.protect}
    out, code = "", 0
    with s.patch or contextlib.nullcontext():
        if s.args is not None:
            r = CliRunner().invoke(app, s.args)
            code, out = r.exit_code, r.output
            if r.exception is not None and not isinstance(r.exception, SystemExit):
                code, out = 99, f"traceback: {type(r.exception).__name__}: {r.exception}"
        else:
            try:
                s.call()
            except Exception as e:  # noqa: BLE001 - the probe records whatever was raised
                from cap_edge.errors import CapEdgeError

                code, out = (2 if isinstance(e, CapEdgeError) else 99), f"{type(e).__name__}: {e}"
            except KeyboardInterrupt as e:
                code, out = 130, f"KeyboardInterrupt: {e}"
    lost = [str(p) for p, d in before.items() if _digest(p) != d]
    lost += [str(p) for p in s.absent if p.exists()]
    wrong = s.check() if (s.check and code == 0) else None
    if s.manifest_check is not None:
        m = json.loads(s.manifest_check.read_text()) if s.manifest_check.is_file() else {}
        if m.get("status") != "failed" or not m.get("stopped_at"):
            wrong = f"manifest after a failed stage: status {m.get('status')!r}, stopped_at {m.get('stopped_at')!r}"
    silent_wrong = (code == 0 and probe.expect_code != 0) or bool(wrong)
    lines = [ln for ln in out.splitlines() if ln.strip()]
    msg = next((ln for ln in lines if re.search(probe.expect_msg, ln)), lines[-1] if lines else "")
    return {"probe": probe.name, "category": probe.category, "exit_code": code, "expected_exit_code": probe.expect_code,
            "message": msg.strip()[:300], "message_ok": bool(re.search(probe.expect_msg, out)),
            "silent_wrong": silent_wrong, "wrong": wrong, "data_lost": bool(lost), "left_behind": lost}


# ---------------------------------------------------------------- fixtures built on demand

def tiny_model_dir(work: Path) -> Path:
    from conftest import make_tiny_llama, make_tokenizer

    d = work / "tiny"
    if not d.is_dir():
        make_tiny_llama().save_pretrained(d)
        make_tokenizer().save_pretrained(d)
    return d


def scores_file(work: Path) -> Path:
    from cap_edge.cli import app

    out = work / "scores"
    r = CliRunner().invoke(app, ["score", "--model", str(tiny_model_dir(work)), "--samples", "6", "--out", str(out)])
    assert r.exit_code == 0, r.output
    return out / "head_scores.json"


def profile_file(work: Path, edit: tuple[str, str], name: str = "board.toml") -> Path:
    from device_profiles import load_profile

    text = Path(load_profile("cpu").path).read_text()
    assert edit[0] in text, edit
    p = work / name
    p.write_text(text.replace(*edit))
    return p


def bench_result(**changes) -> dict:
    art = {"format": "gguf", "precision": "q8_0", "bytes": 1000, "compressed_bytes": 600,
           "accuracy": {"acc": 0.5, "ci95": [0.4, 0.6], "n": 100, "chance": 0.25, "answer_ce": 2.0},
           "latency": {"ttft_s": 0.1, "decode_tok_s": 50.0, "peak_rss_mb": 300.0}}
    res = {"device": "cpu", "artifacts": {"pruned/gguf:q8_0": art}}
    res.update(changes)
    return res


def cache_entries(kind: str) -> list[Path]:
    from cap_edge.io import cache_dir

    root = cache_dir() / kind
    return sorted(p for p in root.iterdir() if not p.name.endswith(".jobs")) if root.is_dir() else []


def tiny_build_args(work: Path, out: Path, *extra: str, device: str = "cpu") -> list[str]:
    return ["build", "--device", device, "--model", str(tiny_model_dir(work)), "--out", str(out), "--eval-per-family", "1",
            "--budget-problems", "6", "--budget-tokens", "48", "--prompt-tokens", "8", "--gen-tokens", "4", "--runs", "1",
            *extra]

