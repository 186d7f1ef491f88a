"""The one module that joins the core with ``exporters`` and ``runtimes``."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from .errors import ValidationError

log = logging.getLogger(__name__)


def _pruning_metadata(model_dir: Path) -> dict:
    f = model_dir / "sparsity.json"
    if not f.is_file():
        return {"pruning_method": "none", "sparsity_pattern": "dense", "sparsity": 0.0}
    rep = json.loads(f.read_text())
    return {"pruning_method": rep.get("method"), "sparsity_pattern": rep.get("pattern"),
            "sparsity": round(float(rep.get("achieved_sparsity", 0.0)), 6)}


def export_artifact(model_dir: str | Path, fmt: str, precision: str, out_dir: str | Path,
                    runtime_options: dict | None = None, reference=None):
    """Export, measure sizes, validate against PyTorch, record in the manifest.

    A failed validation keeps the artifact, marks it invalid in the manifest and re-raises the
    ``ValidationError``. ``reference`` = (model, tokenizer) reuses an already loaded PyTorch model.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from exporters import finalize, get_exporter, update_manifest
    from exporters.gguf import quantized_zeros_kept
    from exporters.validate import validate
    from runtimes import load_runtime

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    meta = _pruning_metadata(model_dir)
    art = get_exporter(fmt, precision)(model_dir, out_dir, precision, meta)
    finalize(art, out_dir)
    if reference is None:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        tok = AutoTokenizer.from_pretrained(model_dir)
    else:
        model, tok = reference
    if fmt == "gguf" and precision in ("q8_0", "q4_0"):
        sd = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
        art.metadata["quantized_zeros"] = quantized_zeros_kept(art.path, sd, model.config)
    opts = dict(runtime_options or {})
    if fmt == "onnx":
        opts.setdefault("eos_token_id", tok.eos_token_id)
    runtime = load_runtime(fmt, art.path, **opts)
    try:
        art.validation = validate(runtime, model, tok, fmt, precision, art.path)
        art.valid = True
    except ValidationError as e:
        art.validation = {**validate(runtime, model, tok, fmt, precision, art.path, raise_on_fail=False), "error": str(e)}
        art.valid = False
        update_manifest(out_dir, art)
        raise
    update_manifest(out_dir, art)
    return art
