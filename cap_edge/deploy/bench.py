"""``cap-edge bench``: a build's artifacts against the dense model exported the same way, measured
in one run with dense and pruned interleaved in every repetition (machine drift hits both)."""

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


def dense_artifacts(build_dir: Path, source: str, outputs: list[tuple[str, str]], runtime) -> dict:
    """Dense reference artifacts exported the same way as the pruned ones (cached in BUILD_DIR/dense)."""
    from exporters.bundle import resolve

    from ..models import resolve_model_dir
    from .export import export_artifact

    art_dir = build_dir / "dense" / "artifacts"
    man = art_dir / "manifest.json"
    have = {}
    if man.is_file():
        for a in json.loads(man.read_text())["artifacts"]:
            a = resolve(a, art_dir)
            if a.get("valid") and Path(a["path"]).is_file():
                have[(a["format"], a["precision"])] = a
    model_dir, _ = resolve_model_dir(None if source.startswith("embedded:") else source)
    for fmt, prec in outputs:
        if (fmt, prec) not in have:
            have[(fmt, prec)] = resolve(export_artifact(model_dir, fmt, prec, art_dir, runtime, overwrite=True).as_dict(art_dir),
                                        art_dir)
    return have


def bench(build_dir: str | Path, runs: int = 5, prompt_tokens: int = 64, gen_tokens: int = 32,
          eval_per_family: int | None = None, progress: bool = True) -> dict:
    """Dense vs pruned artifacts of a build: TTFT, prefill and decode tokens/s (median, min, max),
    peak RSS, sizes, accuracy through the runtime. All figures host-measured."""
    from tqdm.auto import tqdm
    from transformers import AutoTokenizer

    from device_profiles import RuntimeSpec
    from exporters.bundle import resolve

    from ..evaluate import evaluate
    from ..tasks import load_split
    from .export import load_artifact_runtime, measure_artifact

    for name, v in (("--runs", runs), ("--prompt-tokens", prompt_tokens), ("--gen-tokens", gen_tokens)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise CapEdgeError(f"{name}: expected an integer >= 1, got {v!r}")
    build_dir = Path(build_dir)
    manifest = _load_manifest(build_dir)
    pruned = {(a["format"], a["precision"]): resolve(a, build_dir) for a in manifest.get("artifacts", []) if a.get("valid")}
    if not pruned:
        raise CapEdgeError(f"{build_dir}: the build has no valid artifacts to bench")
    rt = RuntimeSpec(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in manifest["plan"]["runtime"].items()})
    tok = AutoTokenizer.from_pretrained(manifest["pruned"]["dir"])
    dense = dense_artifacts(build_dir, manifest["inputs"]["model"]["source"], list(pruned), rt)
    ev = load_split(manifest["plan"]["evaluation"]["tasks"], "eval", eval_per_family or manifest["plan"]["evaluation"]["per_family"])
    items = {}
    for (fmt, prec), a in pruned.items():
        items[f"pruned/{fmt}:{prec}"] = a
        items[f"dense/{fmt}:{prec}"] = dense[(fmt, prec)]
    names = list(items)
    bar = tqdm(total=len(names) * (runs + 1), desc="bench", disable=not progress)
    acc = {}
    for n in names:
        r = evaluate(load_artifact_runtime(items[n], rt, tok.eos_token_id), tok, ev)["overall"]
        acc[n] = {k: r[k] for k in ("acc", "ci95", "n", "chance", "answer_ce")}
        bar.update(1)
    samples = {n: [] for n in names}
    for i in range(runs):  # interleaved: dense and pruned alternate within every repetition
        for n in (names if i % 2 == 0 else names[::-1]):
            samples[n].append(measure_artifact(items[n], prompt_tokens, gen_tokens, 1, rt, tok.eos_token_id, vocab=len(tok)))
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
