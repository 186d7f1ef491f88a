"""Export one artifact: write it to a staging folder, validate it against PyTorch, and only then
move it under its final name, zip it and record it in the manifest."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from ..errors import CapEdgeError, ExportError, ValidationError
from ..models import load_weights


def pruning_metadata(model_dir: Path) -> dict:
    f = Path(model_dir) / "sparsity.json"
    if not f.is_file():
        return {"pruning_method": "none", "sparsity_pattern": "dense", "sparsity": 0.0}
    rep = json.loads(f.read_text())
    return {"pruning_method": rep.get("method"), "sparsity_pattern": rep.get("pattern"),
            "sparsity": round(float(rep.get("achieved_sparsity", 0.0)), 6)}


def runtime_kwargs(spec, runtime_spec, eos_token_id: int | None) -> dict:
    """Loader kwargs of ``spec``'s runtime, from a profile's runtime section (typed end to end), or
    the runtime's defaults without one."""
    from runtimes import RUNTIMES

    return RUNTIMES[spec.runtime].profile_options(runtime_spec, eos_token_id)


def export_artifact(model_dir: str | Path, fmt: str, precision: str, out_dir: str | Path, runtime=None,
                    reference=None, export_options: dict | None = None, overwrite: bool = False):
    """Export, validate against PyTorch, then place, zip and record in ``out_dir/manifest.json``.

    ``runtime``: a device profile's runtime section (providers, GPU layers, context). ``reference``
    = (model, tokenizer) reuses an already loaded PyTorch model. Nothing appears under the final
    name before validation has run; a failed validation places the artifact marked invalid in the
    manifest and raises ``ValidationError``. Existing files are never replaced unless ``overwrite``.
    """
    import torch
    from transformers import AutoTokenizer

    from exporters import finalize, get_spec, update_manifest
    from exporters.bundle import place
    from exporters.gguf import quantized_zeros_kept
    from exporters.validate import validate
    from runtimes import load_runtime

    spec = get_spec(fmt, precision)
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"output path {out_dir} is a file; expected a directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    if reference is None:
        model = load_weights(model_dir, torch.float32).eval()
        tok = AutoTokenizer.from_pretrained(model_dir)
    else:
        model, tok = reference
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".staging-") as staging:
        art = spec.exporter(model_dir, Path(staging), precision, pruning_metadata(model_dir), **(export_options or {}))
        clash = [str(Path(f).relative_to(staging)) for f in art.files if (out_dir / Path(f).relative_to(staging)).exists()]
        if clash and not overwrite:
            raise ExportError(f"{out_dir} already holds {', '.join(clash)}; refusing to replace it (pass --overwrite)")
        if fmt == "gguf" and spec.quantized:
            sd = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
            art.metadata["quantized_zeros"] = quantized_zeros_kept(art.path, sd, model.config)
        opts = runtime_kwargs(spec, runtime, tok.eos_token_id)
        if spec.kv_cache_type:
            opts["kv_cache_type"] = spec.kv_cache_type  # validate the file, not llama.cpp's f16 cache
        rt = load_runtime(spec.runtime, art.path, **opts)
        art.validation = validate(rt, model, tok, spec, art.path, raise_on_fail=False)
        del rt  # release the file before it moves
        art.validation["kv_cache_type"] = opts.get("kv_cache_type", "runtime default")
        art.valid = art.validation["passed"]
        place(art, Path(staging), out_dir, model_dir, spec)
    from ..gguf_import import source_info

    src = source_info(model_dir)
    finalize(art, out_dir, spec, {"license": src.get("keys", {}).get("general.license"), "name": src.get("name")})
    if not art.valid:
        f = art.validation["failures"][0]
        err = ValidationError(str(art.path), f["metric"], f["value"], f["tolerance"])
        art.validation["error"] = str(err)
        update_manifest(out_dir, art)  # kept, and marked invalid
        raise err
    update_manifest(out_dir, art)
    return art


def load_artifact_runtime(entry: dict, runtime=None, eos_token_id: int | None = None):
    """A runtime on a manifest entry's artifact, with the profile's options."""
    from exporters import get_spec
    from runtimes import load_runtime

    spec = get_spec(entry["format"], entry["precision"])
    return load_runtime(spec.runtime, entry["path"], **runtime_kwargs(spec, runtime, eos_token_id))


def measure_artifact(entry: dict, prompt_tokens: int, gen_tokens: int, runs: int, runtime=None,
                     eos_token_id: int | None = None, vocab: int = 1000) -> dict:
    """Latency + peak RSS of one artifact, measured in a separate process (host-measured), with the
    same loader options as every other use of it."""
    import subprocess
    import sys

    from exporters import get_spec

    spec = get_spec(entry["format"], entry["precision"])
    opts = runtime_kwargs(spec, runtime, eos_token_id)
    cmd = [sys.executable, "-m", "runtimes.measure", spec.runtime, str(entry["path"]), "--prompt-tokens", str(prompt_tokens),
           "--gen-tokens", str(gen_tokens), "--runs", str(runs), "--vocab", str(vocab), "--options", json.dumps(opts)]
    root = Path(__file__).resolve().parent.parent.parent
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=root)
    if proc.returncode != 0:
        from ..errors import MeasurementError

        raise MeasurementError(f"measuring {entry['path']} failed: {proc.stderr.strip()[-500:]}")
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError) as e:
        raise CapEdgeError(f"measuring {entry['path']}: expected one JSON line, got {proc.stdout[-200:]!r}") from e
