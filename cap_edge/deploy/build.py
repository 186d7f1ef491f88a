"""``cap-edge build``: every candidate the profile asks for (with ``[search]``: a small grid of
structurally pruned models, and N:M where the device's runtime exploits it; without: the profile's
one pruning configuration), each exported at the profile's outputs, validated, and measured through
its runtime beside the dense model at the same and at the next lower precision. Ships, per output,
the most accurate candidate that meets the profile's targets (search) or the configured one (fixed),
and says plainly whether pruning beat "just quantize it". Every stage is recorded in manifest.json
as it ends; a failing stage leaves status "failed" and ``stopped_at``."""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..config import BuildConfig, ScoreConfig
from ..errors import CapEdgeError, MemoryBudgetError
from ..io import write_json
from ..pruning.methods import get_method, needs_cap_scores
from .estimate import memory_estimates, param_count

# rough costs on the 2-core reference host for the dry run's estimate (seconds, SmolLM2-135M; scaled
# by parameters): scores, one pruned model, one artifact through export + assessment + timing
COST = {"scores": 150.0, "prune": 60.0, "artifact": 80.0}


def _prune_plan(pc) -> dict | None:
    """A candidate's pruning as the plan prints it; a CAP-guided method's resolved guidance too (its allocation
    signal and bound are defaults that depend on the method and target)."""
    if pc is None:
        return None
    out = {"method": pc.method, "pattern": pc.pattern, "sparsity": pc.target_sparsity}
    if get_method(pc.method).guided:
        out["guidance"] = pc.guidance
    return out


def output_specs(cfg: BuildConfig):
    from exporters import get_spec

    return [get_spec(f, p) for f, p in cfg.outputs()]


def build_candidates(cfg: BuildConfig):
    from exporters import get_spec

    from .search import Candidate, candidates

    outputs = [f"{f}:{p}" for f, p in cfg.outputs()]
    lower = {o: (f"{get_spec(*o.rsplit(':', 1)).format}:{get_spec(*o.rsplit(':', 1)).lower}"
                 if get_spec(*o.rsplit(":", 1)).lower else None) for o in outputs}
    if cfg.searching:
        return candidates(cfg.search_cfg, outputs, cfg.profile.hardware.sparse_pattern, cfg.prune_cfg, lower)
    fixed = [("dense", None), ("configured", cfg.prune_cfg)]
    out = [Candidate(n, p, o) for n, p in fixed for o in outputs]
    return out + [c for c in candidates(cfg.search_cfg, outputs, "none", cfg.prune_cfg, lower) if c.baseline]


def plan(cfg: BuildConfig, estimates: list[dict] | None = None) -> dict:
    """The resolved plan: what a build would do, with the memory estimate and the candidate grid; reads no weights."""
    from ..models import model_config

    mc, source = model_config(cfg.model)
    p = cfg.profile
    if estimates is None:
        estimates = memory_estimates(mc, output_specs(cfg), p.runtime.context_length)
    cands = build_candidates(cfg)
    models = {c.name for c in cands if c.prune is not None}
    scale = param_count(mc) / 134.5e6
    scored = sorted({c.name for c in cands if c.prune is not None and needs_cap_scores(c.prune)})  # read CAP scores
    cost = scale * (COST["scores"] * bool(scored)
                    + COST["prune"] * len(models) + COST["artifact"] * len(cands))
    return {
        "device": p.name, "profile_file": p.path, "description": p.description, "model": source, "parameters": param_count(mc),
        "calibration": {"spec": cfg.calib, "draw": cfg.calib_draw, **asdict(cfg.budget_cfg)},
        "scoring": {"mode": cfg.scoring_mode, "subsets": ScoreConfig().subsets, "read_by": scored},  # [] skips it
        "search": asdict(cfg.search_cfg) if cfg.searching else "off (the profile's [prune] configuration)",
        "targets": asdict(p.targets),
        "candidates": [{"name": c.name, "output": c.output, "baseline": c.baseline, "prune": _prune_plan(c.prune)} for c in cands],
        "estimated_seconds": round(cost), "estimated_seconds_label": "rough, from this project's 2-core host",
        "outputs": [f"{f}:{pr}" for f, pr in cfg.outputs()], "runtime": asdict(p.runtime),
        "evaluation": {"tasks": cfg.eval_tasks, **{k: getattr(cfg.search_cfg, k) for k in ("knowledge_per_family",
                                                                                    "suite_per_family", "gen_per_family")}},
        "measurement": {"prompt_tokens": cfg.prompt_tokens, "gen_tokens": cfg.gen_tokens, "runs": cfg.runs},
        "memory_estimate": estimates, "memory_budget_mb": p.hardware.memory_budget_mb,
        "hardware": asdict(p.hardware), "out": cfg.out,
    }


def static_options(cfg: BuildConfig, calib, tokenizer) -> dict:
    """Fixed-shape export settings from the profile; calibration = the sequences CAP scored."""
    from exporters.onnx_static import calibration_sequences

    e, budget = cfg.profile.export, cfg.budget_cfg
    seqs = calibration_sequences(tokenizer, calib[: budget.problems], budget.tokens_per_problem)
    return {"chunk": e.static_chunk, "context": cfg.profile.runtime.context_length, "keep_float": tuple(e.keep_float),
            "calibration": seqs, "op_table": e.op_table or None}


def versions() -> dict:
    import importlib.metadata as md

    out = {}
    for pkg in ("cap-edge", "torch", "transformers", "optimum", "optimum-onnx", "onnx", "onnxruntime", "onnxruntime-genai",
                "llama-cpp-python", "gguf", "numpy"):
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


@dataclass
class Context:
    """What every candidate's assessment shares."""

    profile: object
    tokenizer: object
    evalset: object
    ref: object
    prompt_tokens: int
    gen_tokens: int
    runs: int
    static: dict | None = None

    def export_options(self, fmt: str):
        return self.static if fmt == "onnx-static" else None


def build(cfg: BuildConfig, progress: bool = True, log_fn=None) -> dict:
    from ..assess import EvalSet, dense_reference
    from ..io import check_output_dir, sha256_json
    from ..models import load_model, model_config, model_fingerprint
    from ..pruning.run import prune_stage
    from ..tasks import calibration_problems, check_disjoint
    from .candidates import candidate_row, copy_model
    from .search import select

    say = log_fn or (lambda s: None)
    out = Path(cfg.out)
    mc, _ = model_config(cfg.model)
    estimates = memory_estimates(mc, output_specs(cfg), cfg.profile.runtime.context_length)
    cands = build_candidates(cfg)
    check_output_dir(out, cfg.overwrite, what="build",
                     need_bytes=int(sum(e["weights_mb"] for e in estimates) * 2**20 * 2.5 * len({c.name for c in cands})))
    out.mkdir(parents=True, exist_ok=True)
    man = Manifest(out, {"status": "running", "device": cfg.profile.name, "plan": plan(cfg, estimates), "versions": versions(),
                         "stages": {}, "artifacts": [], "inputs": {}})
    m = man.data
    with man.stage("memory_check", say):
        smallest = min(e["total_mb"] for e in estimates) * (1 - max([c.prune.target_sparsity for c in cands if c.prune
                                                                     and c.prune.structured] or [0]))
        if smallest > cfg.profile.hardware.memory_budget_mb:
            e = min(estimates, key=lambda e: e["total_mb"])
            raise MemoryBudgetError(
                f"the model needs about {e['total_mb']:.0f} MB at {e['output']} (weights {e['weights_mb']:.0f} MB + "
                f"KV cache {e['kv_cache_mb']:.0f} MB + 10%), over the {cfg.profile.name} memory budget of "
                f"{cfg.profile.hardware.memory_budget_mb:.0f} MB, and no candidate removes enough")
        m["memory_estimate"] = estimates
    with man.stage("load", say):
        lm = load_model(cfg.model)
        fp = model_fingerprint(lm.model)
        m["inputs"]["model"] = {"source": lm.source, "sha256_weights": fp}
        dense_dir = lm.path
    with man.stage("calibrate", say):
        s = cfg.search_cfg
        ev = EvalSet.build(s.knowledge_per_family, s.suite_per_family, s.gen_per_family)
        calib = calibration_problems(cfg.calib, max(cfg.budget_cfg.problems, cfg.prune_cfg.stats_problems),
                                     draw=cfg.calib_draw)
        check_disjoint(calib, ev.knowledge + ev.suite + ev.gen)
        m["inputs"]["evaluation"] = {**ev.sizes(), "sha256": sha256_json(ev.all_questions())}
        m["inputs"]["calibration"] = {"spec": cfg.calib, "draw": cfg.calib_draw, "problems": cfg.budget_cfg.problems}
    with man.stage("reference", say):
        ref = dense_reference(lm.model, lm.tokenizer, ev)
        m["reference"] = ref.as_dict()
    models, m["pruned"] = {"dense": dense_dir}, {}
    with man.stage("prune", say):
        for c in cands:
            if c.prune is None or c.name in models:
                continue
            say(f"  {c.name}")
            lm = load_model(cfg.model)  # every candidate starts from the dense weights
            res = prune_stage(lm, c.prune, calib=cfg.calib, budget=cfg.budget_cfg, score_cfg=ScoreConfig(mode=cfg.scoring_mode),
                              draw=cfg.calib_draw, model_fp=fp, progress=progress)
            models[c.name] = res.dir
            m["pruned"][c.name] = {"dir": str(res.dir), "cache_hit": res.cache_hit, "method": res.report["method"],
                                   "pattern": res.report["pattern"], "achieved_sparsity": res.report["achieved_sparsity"],
                                   "guidance": res.report.get("guidance")}  # CAP-guided: allocation signal, bound, factors
            if res.head_scores is not None and not (out / "head_scores.json").exists():
                write_json(out / "head_scores.json", res.head_scores)
                m["scores"] = {"cache_key": res.head_scores["hashes"]["cache_key"], "mode": res.head_scores["mode"],
                               "cache_hit": res.head_scores.get("cache_hit"), "seconds": res.head_scores.get("seconds")}
            man.save()
    ctx = Context(cfg.profile, lm.tokenizer, ev, ref, cfg.prompt_tokens, cfg.gen_tokens, cfg.runs,
                  static_options(cfg, calib, lm.tokenizer) if any(c.output.startswith("onnx-static") for c in cands) else None)
    del lm
    rows = []
    with man.stage("candidates", say):
        for c in cands:
            rows.append(candidate_row(c, models[c.name], out / "candidates" / c.name, ctx, say))
            m["candidates"] = [_public(r, out) for r in rows]
            man.save()
    with man.stage("select", say):
        m["selection"] = {}
        shipped = []
        for o in [f"{f}:{p}" for f, p in cfg.outputs()]:
            fam = [r for r in rows if r["output"] == o or (r["baseline"] and r["output"].split(":")[0] == o.split(":")[0])]
            sel = select(fam, cfg.profile.targets, cfg.profile.hardware.memory_budget_mb)
            if not cfg.searching:  # fixed: ship the configured model, but say how it compares
                configured = next(i for i, r in enumerate(fam) if r["name"] == "configured" and r["output"] == o)
                sel = {**sel, "chosen": configured, "message": f"fixed configuration (--search off); the search rule "
                       f"would ship {fam[sel['chosen']]['name']} {fam[sel['chosen']]['output']}: {sel['message']}"}
            for r, front, miss in zip(fam, sel["pareto"], sel["failures"]):
                r.setdefault("pareto", {})[o], r.setdefault("misses", {})[o] = front, miss
            chosen = fam[sel["chosen"]]
            shipped.append(chosen)
            m["selection"][o] = {"shipped": f"{chosen['name']} {chosen['output']}", "met_targets": sel["met_targets"],
                                 "message": sel["message"], "pruned_beats_dense": sel["pruned_beats_dense"]}
            say(f"  {o}: {sel['message']}")
        m["candidates"] = [_public(r, out) for r in rows]
        m["artifacts"] = [_shipped_entry(r, out) for r in shipped]
        ship_model = max(shipped, key=lambda r: not r["dense"])  # the pruned model when any output ships one
        copy_model(Path(models[ship_model["name"]]), out / "model")
        m["model_dir"] = "model"
        m["pruned"]["shipped"] = ship_model["name"]
        if cfg.profile.export.handoff == "jetson":
            from .handoff import write_jetson_handoff

            by = {r["output"].split(":")[0]: r for r in shipped}
            onnx_row = by.get("onnx", {})
            onnx_shipped = onnx_row.get("output") if onnx_row and onnx_row["output"] != "onnx:fp16" else None
            if onnx_shipped:  # TensorRT needs fp16: the same model's validated fp16 candidate, when the grid has one
                onnx_row = next((r for r in rows if r["name"] == onnx_row["name"] and r["output"] == "onnx:fp16"
                                 and r.get("valid")), {})
            onnx = onnx_row.get("path")
            m["handoff"] = write_jetson_handoff(out, onnx, by.get("gguf", {}).get("path"), str(out / "model"),
                                                cfg.prompt_tokens, cfg.profile.runtime.context_length,
                                                ship_model["pattern"] == "structured",
                                                onnx_shipped=onnx_shipped)
    with man.stage("report", say):
        from ..io import atomic_path
        from .report import build_report_md

        with atomic_path(out / "report.md") as tmp:
            tmp.write_text(build_report_md(m, out))
    m["status"] = "complete"
    man.save()
    return m


def _public(row: dict, out: Path) -> dict:
    """A candidate row for the manifest: paths relative to the build, no per-problem outcomes."""
    import os

    d = {k: v for k, v in row.items() if k not in ("entry", "hits")}
    d["path"] = os.path.relpath(row["path"], out)
    if row.get("entry") is None:  # not exportable in this format
        return d
    e = dict(row["entry"])
    rel = lambda p: os.path.relpath(p, out) if p else p  # noqa: E731
    e.update(path=rel(e["path"]), bundle=rel(e["bundle"]), files=[rel(f) for f in e["files"]],
             side_files=[rel(f) for f in e.get("side_files", [])])
    d["entry"] = e
    return d


def _shipped_entry(row: dict, out: Path) -> dict:
    """The shipped artifact's manifest entry, paths relative to the build folder, with its figures."""
    import os

    e = dict(row["entry"])
    rel = lambda p: os.path.relpath(p, out) if p else p  # noqa: E731
    e.update(path=rel(e["path"]), bundle=rel(e["bundle"]), files=[rel(f) for f in e["files"]],
             side_files=[rel(f) for f in e.get("side_files", [])], candidate=row["name"],
             accuracy={"label": "host-measured", "overall": {"acc": row["acc"], "ci95": row["acc_ci"], "n": row["n"],
                                                              "chance": row["chance"], "answer_ce": row["answer_ce"]}},
             fidelity={k: row[k] for k in ("kl", "kl_p99", "top1", "ppl", "retention")},
             latency=row["host"], estimated=row["estimated"])
    return e


__all__ = ["build", "plan", "BuildConfig", "CapEdgeError"]
