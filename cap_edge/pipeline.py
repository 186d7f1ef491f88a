"""The one module that joins the core with ``exporters`` and ``runtimes``."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import CapEdgeError, ValidationError
from .models import load_weights

log = logging.getLogger(__name__)


def _pruning_metadata(model_dir: Path) -> dict:
    f = model_dir / "sparsity.json"
    if not f.is_file():
        return {"pruning_method": "none", "sparsity_pattern": "dense", "sparsity": 0.0}
    rep = json.loads(f.read_text())
    return {"pruning_method": rep.get("method"), "sparsity_pattern": rep.get("pattern"),
            "sparsity": round(float(rep.get("achieved_sparsity", 0.0)), 6)}


def export_artifact(model_dir: str | Path, fmt: str, precision: str, out_dir: str | Path,
                    runtime_options: dict | None = None, reference=None, export_options: dict | None = None):
    """Export, measure sizes, validate against PyTorch, record in the manifest.

    A failed validation keeps the artifact, marks it invalid in the manifest and re-raises the
    ``ValidationError``. ``reference`` = (model, tokenizer) reuses an already loaded PyTorch model.
    """
    import torch
    from transformers import AutoTokenizer

    from exporters import finalize, get_exporter, update_manifest
    from exporters.gguf import quantized_zeros_kept
    from exporters.validate import validate
    from runtimes import load_runtime

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    meta = _pruning_metadata(model_dir)
    art = get_exporter(fmt, precision)(model_dir, out_dir, precision, meta, **(export_options or {}))
    finalize(art, out_dir)
    if reference is None:
        model = load_weights(model_dir, torch.float32).eval()
        tok = AutoTokenizer.from_pretrained(model_dir)
    else:
        model, tok = reference
    if fmt == "gguf" and precision in ("q8_0", "q4_0"):
        sd = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
        art.metadata["quantized_zeros"] = quantized_zeros_kept(art.path, sd, model.config)
    opts = dict(runtime_options or {})
    if fmt.startswith("onnx"):
        opts.setdefault("eos_token_id", tok.eos_token_id)
    greedy_ref = None
    if fmt == "gguf" and precision in ("f32", "f16"):
        opts["kv_cache_type"] = "f32"  # validate the file, not llama.cpp's f16 cache
        if precision == "f16":
            from exporters.validate import rounded_reference

            greedy_ref = rounded_reference(model)
    runtime = load_runtime(fmt, art.path, **opts)
    art.validation = validate(runtime, model, tok, fmt, precision, art.path, raise_on_fail=False, greedy_reference=greedy_ref)
    art.validation["kv_cache_type"] = opts.get("kv_cache_type", "runtime default")
    art.valid = art.validation["passed"]
    if not art.valid:
        f = art.validation["failures"][0]
        err = ValidationError(str(art.path), f["metric"], f["value"], f["tolerance"])
        art.validation["error"] = str(err)
        update_manifest(out_dir, art)  # kept, and marked invalid
        raise err
    update_manifest(out_dir, art)
    return art


# ---------------------------------------------------------------- measurement helpers

def measure_artifact(fmt: str, path: str | Path, prompt_tokens: int, gen_tokens: int, runs: int,
                     providers=None, vocab: int = 1000) -> dict:
    """Latency + peak RSS of one artifact, measured in a separate process (host-measured)."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "runtimes.measure", fmt, str(path), "--prompt-tokens", str(prompt_tokens),
           "--gen-tokens", str(gen_tokens), "--runs", str(runs), "--vocab", str(vocab)]
    if providers and fmt == "onnx":
        cmd += ["--providers", *providers]
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=root)
    if proc.returncode != 0:
        raise RuntimeError(f"measuring {path} failed: {proc.stderr.strip()[-500:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


BYTES_PER_PARAM = {"fp32": 4.0, "f32": 4.0, "fp16": 2.0, "f16": 2.0, "int8": 1.0, "q8_0": 34 / 32, "int4": 0.5 + 2 / 32,
                   "q4_0": 18 / 32, "qdq8": 1.0, "qdq16": 1.0}  # QDQ: int8 weights (float-kept nodes not counted)


def param_count(model_dir_or_config) -> int:
    """Parameters of a model from its config alone (meta device: no weights are read)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = model_dir_or_config if not isinstance(model_dir_or_config, (str, Path)) else AutoConfig.from_pretrained(model_dir_or_config)
    from .structure import is_structured, layer_sizes, shape_model

    with torch.device("meta"):
        m = AutoModelForCausalLM.from_config(cfg)
        if is_structured(cfg):
            shape_model(m, layer_sizes(cfg))
    return sum(p.numel() for p in m.parameters())


def memory_estimate_mb(config, precision: str, context: int, params: int | None = None) -> dict:
    """Weights at ``precision`` + fp16 KV cache for ``context`` tokens + 10% runtime overhead."""
    from .arch import head_geometry
    from .structure import layer_sizes

    g = head_geometry(config)
    weights = (params if params is not None else param_count(config)) * BYTES_PER_PARAM[precision]
    kv = 2 * sum(layer_sizes(config)["num_kv_heads"]) * g.head_dim * context * 2  # K and V, fp16, per layer
    total = (weights + kv) * 1.10
    return {"precision": precision, "weights_mb": weights / 2**20, "kv_cache_mb": kv / 2**20, "total_mb": total / 2**20}


def roofline(hw, params: int, weight_bytes: int, prompt_tokens: int, pattern: str) -> dict:
    """Lower bounds on the target: decode s/token >= bytes read / bandwidth; prefill >= FLOPs / TOPS,
    with sparse TOPS credited only when the device's runtime exploits this sparsity pattern."""
    sparse_ok = hw.sparse_pattern != "none" and pattern == hw.sparse_pattern
    tops = hw.sparse_tops if sparse_ok else hw.dense_tops
    decode_s = weight_bytes / (hw.memory_bandwidth_gbs * 1e9)
    prefill_s = 2 * params * prompt_tokens / (tops * 1e12)
    return {"label": "estimated", "decode_tok_s_max": 1 / decode_s, "ttft_s_min": prefill_s,
            "prefill_tok_s_max": prompt_tokens / prefill_s, "sparsity_credited": sparse_ok,
            "tops_used": tops, "bandwidth_gbs": hw.memory_bandwidth_gbs}


# ---------------------------------------------------------------- build


@dataclass(frozen=True)
class BuildConfig:
    """Everything a build needs; the CLI's flags and the Python API both produce one."""

    profile: object  # device_profiles.DeviceProfile
    out: str
    model: str | None = None
    calib: str = "embedded"
    eval_tasks: str = "embedded"
    eval_per_family: int = 10
    prune: object = None  # PruneConfig; None -> the profile's
    budget: object = None  # BudgetConfig; None -> the profile's
    score_mode: str = "exact"
    prompt_tokens: int = 64
    gen_tokens: int = 32
    runs: int = 3
    overwrite: bool = False

    @property
    def prune_cfg(self):
        return self.prune or self.profile.prune

    @property
    def budget_cfg(self):
        return self.budget or self.profile.budget

    def outputs(self) -> list[tuple[str, str]]:
        e = self.profile.export
        out = []
        precs = {"onnx": e.onnx_precisions, "gguf": e.gguf_precisions, "onnx-static": e.static_precisions}
        for fmt in e.formats:
            out += [(fmt, p) for p in precs[fmt]]
        return out


def plan(cfg: BuildConfig) -> dict:
    """The resolved plan: what a build would do, with the memory estimate; reads no weights."""
    from .models import model_config

    mc, source = model_config(cfg.model)
    p = cfg.profile
    params = param_count(mc)
    mems = [memory_estimate_mb(mc, prec, p.runtime.context_length, params) for _, prec in cfg.outputs()]
    return {
        "device": p.name, "profile_file": p.path, "description": p.description,
        "model": source, "parameters": params,
        "calibration": {"spec": cfg.calib, **asdict(cfg.budget_cfg)},
        "scoring": {"mode": cfg.score_mode, "subsets": 3},
        "pruning": {"method": cfg.prune_cfg.method, "pattern": cfg.prune_cfg.pattern,
                    "target_sparsity": cfg.prune_cfg.target_sparsity},
        "outputs": [f"{f}:{pr}" for f, pr in cfg.outputs()],
        "runtime": {"onnx_providers": list(p.runtime.onnx_providers), "llamacpp_gpu_layers": p.runtime.llamacpp_gpu_layers,
                    "provider_options": p.runtime.provider_options, "context_length": p.runtime.context_length},
        "evaluation": {"tasks": cfg.eval_tasks, "per_family": cfg.eval_per_family},
        "measurement": {"prompt_tokens": cfg.prompt_tokens, "gen_tokens": cfg.gen_tokens, "runs": cfg.runs},
        "memory_estimate": mems, "memory_budget_mb": p.hardware.memory_budget_mb,
        "hardware": asdict(p.hardware), "out": cfg.out,
    }


def runtime_options(rt: dict, eos_token_id: int | None) -> dict[str, dict]:
    """Loader kwargs per format from a plan's ``runtime`` section (the same for build and bench)."""
    onnx = {"providers": tuple(rt["onnx_providers"]), "provider_options": rt["provider_options"],
            "eos_token_id": eos_token_id}
    return {"onnx": onnx, "onnx-static": dict(onnx),
            "gguf": {"n_gpu_layers": rt["llamacpp_gpu_layers"], "n_ctx": rt["context_length"]}}


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


def check_memory(cfg: BuildConfig, model_config) -> list[dict]:
    from .errors import MemoryBudgetError

    params = param_count(model_config)
    ests = [memory_estimate_mb(model_config, prec, cfg.profile.runtime.context_length, params) for _, prec in cfg.outputs()]
    budget = cfg.profile.hardware.memory_budget_mb
    for e in ests:
        if e["total_mb"] > budget:
            raise MemoryBudgetError(
                f"the model needs about {e['total_mb']:.0f} MB at {e['precision']} (weights {e['weights_mb']:.0f} MB + "
                f"KV cache {e['kv_cache_mb']:.0f} MB + 10%), over the {cfg.profile.name} memory budget of {budget:.0f} MB")
    return ests


def _versions() -> dict:
    import importlib.metadata as md

    out = {}
    for pkg in ("cap-edge", "torch", "transformers", "optimum", "optimum-onnx", "onnx", "onnxruntime", "llama-cpp-python", "gguf", "numpy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def build(cfg: BuildConfig, progress: bool = True, log_fn=None) -> dict:
    """load -> memory check -> calibrate -> CAP scores (cached) -> prune (cached) -> export + validate
    -> accuracy through the runtime -> latency/memory (host-measured) + roofline (estimated) ->
    manifest.json + report.md. A failing stage leaves earlier results and a manifest saying where it stopped."""
    import time

    from .config import ScoreConfig
    from .evaluate import evaluate
    from .io import atomic_dir, cache_dir, sha256_json, write_json
    from .models import load_model, model_fingerprint
    from .prune_io import save_pruned
    from .pruning import prune_model
    from .scoring import build_calib_batch, score_channels, score_heads
    from .tasks import calibration_problems, check_disjoint, load_split

    say = log_fn or (lambda s: None)
    out = Path(cfg.out)
    if out.exists() and (out / "manifest.json").exists() and not cfg.overwrite:
        raise CapEdgeError(f"{out} already holds a build (manifest.json); pass --overwrite to rebuild into it")
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"status": "running", "device": cfg.profile.name, "plan": plan(cfg), "versions": _versions(),
                "stages": {}, "artifacts": [], "inputs": {}}
    write_json(out / "manifest.json", manifest)

    def stage(name):
        class _S:
            def __enter__(s):
                s.t = time.perf_counter()
                say(f"[{name}] ...")
                return s

            def __exit__(s, et, ev, tb):
                manifest["stages"][name] = {"seconds": time.perf_counter() - s.t, "ok": et is None}
                if et is not None:
                    manifest["status"] = "failed"
                    manifest["stopped_at"] = name
                    manifest["error"] = f"{et.__name__}: {ev}"
                write_json(out / "manifest.json", manifest)
                return False
        return _S()

    with stage("load"):
        lm = load_model(cfg.model)
        fp = model_fingerprint(lm.model)
        manifest["inputs"]["model"] = {"source": lm.source, "sha256_weights": fp}
    with stage("memory_check"):
        manifest["memory_estimate"] = check_memory(cfg, lm.model.config)
    with stage("calibrate"):
        budget = cfg.budget_cfg
        calib = calibration_problems(cfg.calib, budget.problems)
        ev = load_split(cfg.eval_tasks, "eval", cfg.eval_per_family)
        check_disjoint(calib, ev)
        batch = build_calib_batch(lm.tokenizer, calib, 3, budget, pad_id=lm.tokenizer.pad_token_id or 0)
        manifest["inputs"]["calibration"] = {"spec": cfg.calib, "problems": batch.n, "sha256": batch.fingerprint()}
        manifest["inputs"]["evaluation"] = {"spec": cfg.eval_tasks, "problems": len(ev),
                                            "sha256": sha256_json([p.question for p in ev])}
    pcfg = cfg.prune_cfg
    scores = None
    with stage("score"):
        from .pruning import get_method

        if get_method(pcfg.method).uses_heads:
            scores = score_heads(lm.model, lm.tokenizer, calib, ScoreConfig(mode=cfg.score_mode), budget,
                                 progress=progress, model_fp=fp)
            write_json(out / "head_scores.json", scores)
            manifest["scores"] = {"cache_key": scores["hashes"]["cache_key"], "cache_hit": scores.get("cache_hit"),
                                  "mode": scores["mode"], "seconds": scores.get("seconds")}
    channel_scores = None
    if pcfg.structured and scores is not None:
        with stage("score_channels"):
            channel_scores = score_channels(lm.model, lm.tokenizer, calib, ScoreConfig(), budget, group=pcfg.channel_group,
                                            refine_fraction=pcfg.channel_refine, progress=progress, model_fp=fp)
            manifest["channel_scores"] = {"cache_key": channel_scores["hashes"]["cache_key"],
                                          "cache_hit": channel_scores.get("cache_hit"), "seconds": channel_scores.get("seconds")}
    with stage("prune"):
        if pcfg.structured and pcfg.refit:
            from .pruning import refit_batch

            batch = refit_batch(lm.tokenizer, cfg.calib, pcfg, budget.tokens_per_problem)
            manifest["inputs"]["refit_calibration"] = {"problems": batch.n, "sha256": batch.fingerprint()}
        key = sha256_json({"model": fp, "calib": batch.fingerprint(), "prune": asdict(pcfg),
                           "scores": scores["hashes"]["cache_key"] if scores else None,
                           "channel_scores": channel_scores["hashes"]["cache_key"] if channel_scores else None})
        pruned_dir = cache_dir() / "pruned" / key[:24]
        if (pruned_dir / "sparsity.json").is_file() and (pruned_dir / "model.safetensors").is_file():
            report = json.loads((pruned_dir / "sparsity.json").read_text())
            manifest["pruned"] = {"dir": str(pruned_dir), "cache_hit": True}
        else:
            report = prune_model(lm.model, pcfg, batch, scores, progress=progress, channel_scores=channel_scores)
            save_pruned(lm.model, lm.tokenizer, pruned_dir, report, {
                "model": lm.source, "calibration": {"spec": cfg.calib, "problems": batch.n, "hash": batch.fingerprint()},
                "head_scores": scores["hashes"]["cache_key"] if scores else None}, overwrite=True, source_dir=lm.path)
            manifest["pruned"] = {"dir": str(pruned_dir), "cache_hit": False}
        manifest["pruned"].update({"method": report["method"], "pattern": report["pattern"],
                                   "achieved_sparsity": report["achieved_sparsity"]})
    del lm
    import torch
    from transformers import AutoTokenizer

    ref_model = load_weights(pruned_dir, torch.float32).eval()
    ref_tok = AutoTokenizer.from_pretrained(pruned_dir)
    rt_opts = runtime_options(manifest["plan"]["runtime"], ref_tok.eos_token_id)
    arts = []
    with stage("export"):
        for fmt, prec in cfg.outputs():
            say(f"  export {fmt}:{prec}")
            try:
                a = export_artifact(pruned_dir, fmt, prec, out / "artifacts", rt_opts[fmt], reference=(ref_model, ref_tok),
                                    export_options=static_options(cfg, calib, ref_tok) if fmt == "onnx-static" else None)
                check_op_coverage(cfg, a, say)
            except ValidationError as e:
                say(f"  {fmt}:{prec} failed validation: {e}")
                manifest.setdefault("invalid_artifacts", []).append(str(e))
                continue
            arts.append(a)
    manifest["artifacts"] = [a.as_dict() for a in arts]
    from runtimes import load_runtime

    params = param_count(ref_model.config)
    with stage("evaluate"):
        for a, d in zip(arts, manifest["artifacts"]):
            rt = load_runtime(a.format, a.path, **rt_opts[a.format])
            res = evaluate(rt, ref_tok, ev)
            d["accuracy"] = {"label": "host-measured", "runtime": rt.name, "providers": getattr(rt, "providers", None),
                             "overall": res["overall"], "families": res["families"]}
            write_json(out / "manifest.json", manifest)
    with stage("measure"):
        for a, d in zip(arts, manifest["artifacts"]):
            prov = list(cfg.profile.runtime.onnx_providers) if a.format.startswith("onnx") else None
            d["latency"] = measure_artifact(a.format, a.path, cfg.prompt_tokens, cfg.gen_tokens, cfg.runs, prov,
                                            vocab=ref_model.config.vocab_size)
            d["estimated"] = roofline(cfg.profile.hardware, params, a.bytes, cfg.prompt_tokens, pcfg.pattern)
            write_json(out / "manifest.json", manifest)
    with stage("report"):
        from .report import build_report_md

        (out / "report.md").write_text(build_report_md(manifest))
    manifest["status"] = "complete"
    write_json(out / "manifest.json", manifest)
    return manifest


# ---------------------------------------------------------------- bench

def _dense_artifacts(build_dir: Path, manifest: dict, outputs: list[tuple[str, str]], rt_opts: dict) -> dict:
    """Dense reference artifacts exported the same way as the pruned ones (cached in BUILD_DIR/dense)."""
    from .models import resolve_model_dir

    dense_dir = build_dir / "dense"
    man = dense_dir / "manifest.json"
    have = {}
    if man.is_file():
        for a in json.loads(man.read_text())["artifacts"]:
            if a.get("valid") and Path(a["path"]).is_file():
                have[(a["format"], a["precision"])] = a
    source = manifest["inputs"]["model"]["source"]
    model_dir, _ = resolve_model_dir(None if source.startswith("embedded:") else source)
    for fmt, prec in outputs:
        if (fmt, prec) not in have:
            have[(fmt, prec)] = export_artifact(model_dir, fmt, prec, dense_dir / "artifacts", rt_opts.get(fmt)).as_dict()
            update = json.loads(man.read_text()) if man.is_file() else {"artifacts": []}
            update["artifacts"] = [a for a in update["artifacts"] if a["path"] != have[(fmt, prec)]["path"]] + [have[(fmt, prec)]]
            from .io import write_json

            write_json(man, update)
    return have


def bench(build_dir: str | Path, runs: int = 5, prompt_tokens: int = 64, gen_tokens: int = 32,
          eval_per_family: int | None = None, progress: bool = True) -> dict:
    """Dense vs pruned artifacts of a build, measured in one run with interleaved repetitions so
    machine drift hits both: TTFT, prefill and decode tokens/s (median, min, max), peak RSS, sizes,
    accuracy through the runtime. All figures host-measured."""
    import statistics

    from tqdm.auto import tqdm
    from transformers import AutoTokenizer

    from .evaluate import evaluate
    from .tasks import load_split
    from runtimes import load_runtime

    build_dir = Path(build_dir)
    mf = build_dir / "manifest.json"
    if not mf.is_file():
        raise CapEdgeError(f"{build_dir} is not a build directory (manifest.json missing)")
    manifest = json.loads(mf.read_text())
    pruned = {(a["format"], a["precision"]): a for a in manifest["artifacts"] if a.get("valid")}
    if not pruned:
        raise CapEdgeError(f"{build_dir}: the build has no valid artifacts to bench")
    prov = manifest["plan"]["runtime"]["onnx_providers"]
    tok = AutoTokenizer.from_pretrained(manifest["pruned"]["dir"])
    rt_opts = runtime_options(manifest["plan"]["runtime"], tok.eos_token_id)
    dense = _dense_artifacts(build_dir, manifest, list(pruned), rt_opts)
    ev = load_split(manifest["plan"]["evaluation"]["tasks"], "eval", eval_per_family or manifest["plan"]["evaluation"]["per_family"])
    items = {}
    for (fmt, prec), a in pruned.items():
        items[f"pruned/{fmt}:{prec}"] = a
        items[f"dense/{fmt}:{prec}"] = dense[(fmt, prec)]
    names = list(items)
    total = len(names) * (runs + 1)
    bar = tqdm(total=total, desc="bench", disable=not progress)
    acc = {}
    for n in names:
        a = items[n]
        r = evaluate(load_runtime(a["format"], a["path"], **rt_opts[a["format"]]), tok, ev)["overall"]
        acc[n] = {k: r[k] for k in ("acc", "ci95", "n", "chance", "answer_ce")}
        bar.update(1)
    samples = {n: [] for n in names}
    vocab = len(tok)
    for i in range(runs):  # interleaved: dense and pruned alternate within every repetition
        for n in (names if i % 2 == 0 else names[::-1]):
            a = items[n]
            samples[n].append(measure_artifact(a["format"], a["path"], prompt_tokens, gen_tokens, runs=1,
                                               providers=list(prov) if a["format"] == "onnx" else None, vocab=vocab))
            bar.update(1)
    bar.close()
    res = {"build": str(build_dir), "device": manifest["device"], "label": "host-measured", "runs": runs,
           "prompt_tokens": prompt_tokens, "gen_tokens": gen_tokens, "eval_problems": len(ev), "artifacts": {}, "ratios": {}}
    for n in names:
        ttft = [s["ttft_s"]["median"] for s in samples[n]]
        dec = [s["decode_tok_s"]["median"] for s in samples[n]]
        rss = [s["peak_rss_mb"] for s in samples[n]]
        res["artifacts"][n] = {
            "format": items[n]["format"], "precision": items[n]["precision"], "path": items[n]["path"],
            "bytes": items[n]["bytes"], "compressed_bytes": items[n]["compressed_bytes"], "accuracy": acc[n],
            "latency": {"ttft_s": statistics.median(ttft), "ttft_min": min(ttft), "ttft_max": max(ttft),
                        "prefill_tok_s": prompt_tokens / statistics.median(ttft),
                        "decode_tok_s": statistics.median(dec), "decode_min": min(dec), "decode_max": max(dec),
                        "peak_rss_mb": statistics.median(rss)}}
    for (fmt, prec) in pruned:
        p, d = res["artifacts"][f"pruned/{fmt}:{prec}"], res["artifacts"][f"dense/{fmt}:{prec}"]
        res["ratios"][f"{fmt}:{prec}"] = {
            "ttft": p["latency"]["ttft_s"] / d["latency"]["ttft_s"],
            "decode_tok_s": p["latency"]["decode_tok_s"] / d["latency"]["decode_tok_s"],
            "peak_rss": p["latency"]["peak_rss_mb"] / d["latency"]["peak_rss_mb"],
            "bytes": p["bytes"] / d["bytes"], "compressed_bytes": p["compressed_bytes"] / d["compressed_bytes"],
            "accuracy_diff": p["accuracy"]["acc"] - d["accuracy"]["acc"]}
    return res
