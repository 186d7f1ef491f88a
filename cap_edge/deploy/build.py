"""``cap-edge build``: load -> memory check -> calibrate -> prune stage (scores and pruned model
cached) -> export + validate -> accuracy through the runtime -> latency/memory (host-measured) +
roofline (estimated) -> manifest.json + report.md. Every stage is recorded in the manifest as it
ends; a failing stage leaves status "failed" and ``stopped_at``."""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict
from pathlib import Path

from ..config import BuildConfig, ScoreConfig
from ..errors import CapEdgeError, ValidationError
from ..io import write_json
from .estimate import check_memory, memory_estimates, param_count, roofline


def output_specs(cfg: BuildConfig):
    from exporters import get_spec

    return [get_spec(f, p) for f, p in cfg.outputs()]


def plan(cfg: BuildConfig, estimates: list[dict] | None = None) -> dict:
    """The resolved plan: what a build would do, with the memory estimate; reads no weights."""
    from ..models import model_config

    mc, source = model_config(cfg.model)
    p = cfg.profile
    if estimates is None:
        estimates = memory_estimates(mc, output_specs(cfg), p.runtime.context_length)
    return {
        "device": p.name, "profile_file": p.path, "description": p.description,
        "model": source, "parameters": param_count(mc),
        "calibration": {"spec": cfg.calib, **asdict(cfg.budget_cfg)},
        "scoring": {"mode": cfg.score_mode, "subsets": ScoreConfig().subsets},
        "pruning": {"method": cfg.prune_cfg.method, "pattern": cfg.prune_cfg.pattern,
                    "target_sparsity": cfg.prune_cfg.target_sparsity},
        "outputs": [f"{f}:{pr}" for f, pr in cfg.outputs()],
        "runtime": asdict(p.runtime),
        "evaluation": {"tasks": cfg.eval_tasks, "per_family": cfg.eval_per_family},
        "measurement": {"prompt_tokens": cfg.prompt_tokens, "gen_tokens": cfg.gen_tokens, "runs": cfg.runs},
        "memory_estimate": estimates, "memory_budget_mb": p.hardware.memory_budget_mb,
        "hardware": asdict(p.hardware), "out": cfg.out,
    }


def static_options(cfg: BuildConfig, calib, tokenizer) -> dict:
    """Fixed-shape export settings from the profile; calibration = the sequences CAP scored
    (prompt + gold answer, cut to the budget's tokens per problem like the scoring batch)."""
    from exporters.onnx_static import calibration_sequences

    e, budget = cfg.profile.export, cfg.budget_cfg
    seqs = calibration_sequences(tokenizer, calib[: budget.problems], budget.tokens_per_problem)
    return {"chunk": e.static_chunk, "context": cfg.profile.runtime.context_length, "keep_float": tuple(e.keep_float),
            "calibration": seqs, "op_table": e.op_table or None}


def check_op_coverage(cfg: BuildConfig, artifact, say) -> None:
    """Fail or warn (per profile) when a graph has ops the target execution provider lacks."""
    import warnings

    cov = artifact.metadata.get("op_coverage")
    if not cov:
        return
    missing = {op: v["count"] for g in cov.values() for op, v in g["unsupported"].items()}
    if not missing:
        say(f"  op coverage ({cfg.profile.export.op_table}): every op supported")
        return
    msg = (f"{artifact.path}: ops not in the {cfg.profile.export.op_table} table: "
           + ", ".join(f"{op} x{n}" for op, n in sorted(missing.items())))
    if cfg.profile.export.unsupported_ops == "fail":
        raise CapEdgeError(msg)
    warnings.warn(msg, RuntimeWarning, stacklevel=2)
    say(f"  warning: {msg}")


def versions() -> dict:
    import importlib.metadata as md

    out = {}
    for pkg in ("cap-edge", "torch", "transformers", "optimum", "optimum-onnx", "onnx", "onnxruntime", "llama-cpp-python",
                "gguf", "numpy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


class Manifest:
    """The build's manifest.json, rewritten atomically whenever a stage ends."""

    def __init__(self, out: Path, data: dict):
        self.out, self.data = out, data
        self.save()

    def save(self) -> None:
        write_json(self.out / "manifest.json", self.data)

    @contextlib.contextmanager
    def stage(self, name: str, say):
        t = time.perf_counter()
        say(f"[{name}] ...")
        try:
            yield
        except BaseException as e:  # KeyboardInterrupt too: the manifest says where the build stopped
            self.data["stages"][name] = {"seconds": time.perf_counter() - t, "ok": False}
            self.data.update(status="failed", stopped_at=name, error=f"{type(e).__name__}: {e}")
            self.save()
            raise
        self.data["stages"][name] = {"seconds": time.perf_counter() - t, "ok": True}
        self.save()


def build(cfg: BuildConfig, progress: bool = True, log_fn=None) -> dict:
    from ..evaluate import evaluate
    from ..io import check_output_dir, sha256_json
    from ..models import load_model, load_weights, model_config, model_fingerprint
    from ..pruning.run import prune_stage
    from ..tasks import calibration_problems, check_disjoint, load_split
    from .export import export_artifact, load_artifact_runtime, measure_artifact

    say = log_fn or (lambda s: None)
    out = Path(cfg.out)
    mc, _ = model_config(cfg.model)
    estimates = memory_estimates(mc, output_specs(cfg), cfg.profile.runtime.context_length)
    # artifacts + their zips + the staging copy during export, before any work
    check_output_dir(out, cfg.overwrite, what="build", need_bytes=int(sum(e["weights_mb"] for e in estimates) * 2**20 * 2.5))
    out.mkdir(parents=True, exist_ok=True)
    man = Manifest(out, {"status": "running", "device": cfg.profile.name, "plan": plan(cfg, estimates),
                         "versions": versions(), "stages": {}, "artifacts": [], "inputs": {}})
    m = man.data
    with man.stage("memory_check", say):
        check_memory(estimates, cfg.profile.hardware.memory_budget_mb, cfg.profile.name)
        m["memory_estimate"] = estimates
    with man.stage("load", say):
        lm = load_model(cfg.model)
        fp = model_fingerprint(lm.model)
        m["inputs"]["model"] = {"source": lm.source, "sha256_weights": fp}
    with man.stage("calibrate", say):
        budget = cfg.budget_cfg
        calib = calibration_problems(cfg.calib, budget.problems)
        ev = load_split(cfg.eval_tasks, "eval", cfg.eval_per_family)
        check_disjoint(calib, ev)
        m["inputs"]["evaluation"] = {"spec": cfg.eval_tasks, "problems": len(ev), "sha256": sha256_json([p.question for p in ev])}
    pcfg = cfg.prune_cfg
    with man.stage("prune", say):
        res = prune_stage(lm, pcfg, calib=cfg.calib, budget=budget, score_cfg=ScoreConfig(mode=cfg.score_mode),
                          model_fp=fp, progress=progress)
        m["inputs"]["calibration"] = {"spec": cfg.calib, "problems": len(calib)} if pcfg.structured and pcfg.refit \
            else res.calibration
        if pcfg.structured and pcfg.refit:
            m["inputs"]["refit_calibration"] = res.calibration  # the refit's own, larger batch
        if res.head_scores is not None:
            write_json(out / "head_scores.json", res.head_scores)
            m["scores"] = {"cache_key": res.head_scores["hashes"]["cache_key"], "cache_hit": res.head_scores.get("cache_hit"),
                           "mode": res.head_scores["mode"], "seconds": res.head_scores.get("seconds")}
        if res.channel_scores is not None:
            m["channel_scores"] = {"cache_key": res.channel_scores["hashes"]["cache_key"],
                                   "cache_hit": res.channel_scores.get("cache_hit"), "seconds": res.channel_scores.get("seconds")}
        m["pruned"] = {"dir": str(res.dir), "cache_hit": res.cache_hit, "method": res.report["method"],
                       "pattern": res.report["pattern"], "achieved_sparsity": res.report["achieved_sparsity"]}
    del lm
    import torch
    from transformers import AutoTokenizer

    ref_model = load_weights(res.dir, torch.float32).eval()
    ref_tok = AutoTokenizer.from_pretrained(res.dir)
    rt = cfg.profile.runtime
    arts = []
    with man.stage("export", say):
        for fmt, prec in cfg.outputs():
            say(f"  export {fmt}:{prec}")
            try:
                a = export_artifact(res.dir, fmt, prec, out / "artifacts", rt, reference=(ref_model, ref_tok),
                                    export_options=static_options(cfg, calib, ref_tok) if fmt == "onnx-static" else None,
                                    overwrite=cfg.overwrite)
                check_op_coverage(cfg, a, say)
            except ValidationError as e:
                say(f"  {fmt}:{prec} failed validation: {e}")
                m.setdefault("invalid_artifacts", []).append(str(e))
                continue
            arts.append(a)
    m["artifacts"] = [a.as_dict(out) for a in arts]
    params = param_count(ref_model.config)
    with man.stage("evaluate", say):
        for a, d in zip(arts, m["artifacts"]):
            runtime = load_artifact_runtime(a.as_dict(), rt, ref_tok.eos_token_id)
            r = evaluate(runtime, ref_tok, ev)
            d["accuracy"] = {"label": "host-measured", "runtime": runtime.name, "providers": getattr(runtime, "providers", None),
                             "overall": r["overall"], "families": r["families"]}
            man.save()
    with man.stage("measure", say):
        for a, d in zip(arts, m["artifacts"]):
            d["latency"] = measure_artifact(a.as_dict(), cfg.prompt_tokens, cfg.gen_tokens, cfg.runs, rt,
                                            ref_tok.eos_token_id, vocab=ref_model.config.vocab_size)
            d["estimated"] = roofline(cfg.profile.hardware, params, a.bytes, cfg.prompt_tokens, pcfg.pattern)
            man.save()
    with man.stage("report", say):
        from ..io import atomic_path
        from ..report import build_report_md

        with atomic_path(out / "report.md") as tmp:
            tmp.write_text(build_report_md(m))
    m["status"] = "complete"
    man.save()
    return m
