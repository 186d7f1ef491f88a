"""``cap-edge bench``: a build's shipped artifacts against the dense model exported the same way and
at the next lower precision of each format, measured in one run with every artifact interleaved
in each repetition (machine drift hits all of them), plus accuracy and fidelity to the dense model
through each artifact's runtime."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from ..errors import CapEdgeError


def _load_manifest(build_dir: Path) -> dict:
    mf = build_dir / "manifest.json"
    if not mf.is_file():
        raise CapEdgeError(f"{build_dir} is not a build directory (manifest.json missing)")
    try:
        return json.loads(mf.read_text())
    except ValueError as e:
        raise CapEdgeError(f"{mf}: not valid JSON ({e})") from e


def dense_artifacts(build_dir: Path, manifest: dict, outputs: list[str], runtime) -> dict:
    """Dense artifacts at ``outputs``: the build's own dense candidates where it has them, else
    exported into BUILD_DIR/dense the same way."""
    from exporters.bundle import resolve

    from ..models import resolve_model_dir
    from .export import export_artifact

    have = {}
    for r in manifest.get("candidates", []):
        if r["name"] == "dense" and r.get("valid") and r.get("entry") and (build_dir / r["entry"]["path"]).is_file():
            have[r["output"]] = resolve(r["entry"], build_dir)
    art_dir = build_dir / "dense" / "artifacts"
    man = art_dir / "manifest.json"
    if man.is_file():
        for a in json.loads(man.read_text())["artifacts"]:
            a = resolve(a, art_dir)
            if a.get("valid") and Path(a["path"]).is_file():
                have.setdefault(f"{a['format']}:{a['precision']}", a)
    source = manifest["inputs"]["model"]["source"]
    model_dir, _ = resolve_model_dir(source)
    for o in outputs:
        if have.get(o) is None:
            fmt, prec = o.rsplit(":", 1)
            have[o] = resolve(export_artifact(model_dir, fmt, prec, art_dir, runtime, overwrite=True).as_dict(art_dir), art_dir)
    return have


def bench(build_dir: str | Path, runs: int = 5, prompt_tokens: int = 64, gen_tokens: int = 32,
          eval_per_family: int | None = None, progress: bool = True) -> dict:
    """Shipped vs dense (same precision) vs dense (next lower precision): TTFT, prefill and decode
    tokens/s (median, min, max), peak RSS, sizes, accuracy, answer CE, KL to dense, retention. All host-measured."""
    from tqdm.auto import tqdm
    from transformers import AutoTokenizer

    from device_profiles import RuntimeSpec
    from exporters import get_spec
    from exporters.bundle import resolve

    from ..assess import EvalSet, dense_reference, score_runtime
    from ..models import load_model
    from .export import load_artifact_runtime, measure_artifact

    for name, v in (("--runs", runs), ("--prompt-tokens", prompt_tokens), ("--gen-tokens", gen_tokens)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise CapEdgeError(f"{name}: expected an integer >= 1, got {v!r}")
    build_dir = Path(build_dir)
    manifest = _load_manifest(build_dir)
    shipped = {f"{a['format']}:{a['precision']}": resolve(a, build_dir) for a in manifest.get("artifacts", []) if a.get("valid")}
    if not shipped:
        raise CapEdgeError(f"{build_dir}: the build has no valid artifacts to bench")
    rt = RuntimeSpec(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in manifest["plan"]["runtime"].items()})
    model_dir = build_dir / manifest.get("model_dir", "model")
    tok = AutoTokenizer.from_pretrained(model_dir if model_dir.is_dir() else manifest["pruned"]["dir"])
    lower = {o: f"{o.split(':')[0]}:{get_spec(*o.rsplit(':', 1)).lower}" for o in shipped if get_spec(*o.rsplit(":", 1)).lower}
    dense = dense_artifacts(build_dir, manifest, sorted(set(shipped) | set(lower.values())), rt)
    items = {}
    for o, a in shipped.items():
        items[f"shipped/{o}"] = a
        items[f"dense/{o}"] = dense[o]
        if o in lower:
            items[f"dense/{lower[o]}"] = dense[lower[o]]
    names = list(items)
    ev_sizes = manifest["plan"]["evaluation"]
    n = eval_per_family
    ev = EvalSet.build(n or ev_sizes["knowledge_per_family"], n or ev_sizes["suite_per_family"], n or ev_sizes["gen_per_family"])
    lm = load_model(manifest["inputs"]["model"]["source"])
    ref = dense_reference(lm.model, lm.tokenizer, ev)
    del lm
    bar = tqdm(total=len(names) * (runs + 1), desc="bench", disable=not progress)
    quality = {}
    for name in names:
        q = score_runtime(load_artifact_runtime(items[name], rt, tok.eos_token_id), tok, ev, ref)
        quality[name] = {"accuracy": q["knowledge"], "suite": q["suite"], "fidelity": q["fidelity"], "samples": q["samples"]}
        bar.update(1)
    samples = {name: [] for name in names}
    for i in range(runs):  # interleaved: every artifact once per repetition, alternating order
        for name in (names if i % 2 == 0 else names[::-1]):
            samples[name].append(measure_artifact(items[name], prompt_tokens, gen_tokens, 1, rt, tok.eos_token_id, vocab=len(tok)))
            bar.update(1)
    bar.close()
    res = {"build": str(build_dir), "device": manifest["device"], "label": "host-measured", "runs": runs,
           "prompt_tokens": prompt_tokens, "gen_tokens": gen_tokens, "eval_problems": ev.sizes(), "artifacts": {}, "ratios": {}}
    for name in names:
        ttft = [s["ttft_s"]["median"] for s in samples[name]]
        dec = [s["decode_tok_s"]["median"] for s in samples[name]]
        rss = [s["peak_rss_mb"] for s in samples[name]]
        res["artifacts"][name] = {
            "format": items[name]["format"], "precision": items[name]["precision"], "path": items[name]["path"],
            "bytes": items[name]["bytes"], "compressed_bytes": items[name]["compressed_bytes"], **quality[name],
            "latency": {"ttft_s": statistics.median(ttft), "ttft_min": min(ttft), "ttft_max": max(ttft),
                        "prefill_tok_s": prompt_tokens / statistics.median(ttft),
                        "decode_tok_s": statistics.median(dec), "decode_min": min(dec), "decode_max": max(dec),
                        "peak_rss_mb": statistics.median(rss)}}
    for o in shipped:
        for label, base in (("same precision", f"dense/{o}"), ("lower precision", f"dense/{lower.get(o)}")):
            if base not in res["artifacts"]:
                continue
            p, d = res["artifacts"][f"shipped/{o}"], res["artifacts"][base]
            res["ratios"][f"{o} vs {base}"] = {
                "baseline": label, "ttft": p["latency"]["ttft_s"] / d["latency"]["ttft_s"],
                "decode_tok_s": p["latency"]["decode_tok_s"] / d["latency"]["decode_tok_s"],
                "peak_rss": p["latency"]["peak_rss_mb"] / d["latency"]["peak_rss_mb"],
                "bytes": p["bytes"] / d["bytes"], "compressed_bytes": p["compressed_bytes"] / d["compressed_bytes"],
                "accuracy_diff": p["accuracy"]["acc"] - d["accuracy"]["acc"],
                "kl_diff": p["fidelity"]["kl_mean"] - d["fidelity"]["kl_mean"]}
    return res
