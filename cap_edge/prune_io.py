"""Save a pruned model as a standard Hugging Face directory plus ``sparsity.json``, and re-measure
a saved model's sparsity from its weights."""

from __future__ import annotations

import shutil
from pathlib import Path

from .io import atomic_dir, write_digests, write_json
from .gguf_import import SOURCE_FILE
from .models import structured_config_files
from .structure import is_structured


def save_pruned(model, tokenizer, out: str | Path, report: dict, extra: dict | None = None, overwrite: bool = False,
                source_dir: str | Path | None = None, digests: bool = False) -> Path:
    """Atomically write safetensors + config + tokenizer + sparsity.json into ``out`` (and the source
    GGUF's metadata from ``source_dir``, so exports keep its tokenizer keys, name and license).

    Refuses a non-empty ``out`` unless ``overwrite``; a failure leaves ``out`` as it was. ``digests``
    records every file's sha256 (cache entries, verified before reuse).
    """
    out = Path(out)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if is_structured(model.config):  # per-layer shapes: plain transformers must refuse, not mis-load
            for name, text in structured_config_files(model.config).items():
                (tmp / name).write_text(text)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / "sparsity.json", {**report, **(extra or {})})
        if source_dir is not None and (Path(source_dir) / SOURCE_FILE).is_file():
            shutil.copy(Path(source_dir) / SOURCE_FILE, tmp / SOURCE_FILE)
        if digests:
            write_digests(tmp)
    return out


def measured_sparsity(model_dir: str | Path, report: dict) -> float:
    """The sparsity ``report`` claims, measured again from the saved weights: zeros over the
    prunable matrices it lists (unstructured / N:M), or 1 - parameters left / parameters before
    (structured)."""
    from safetensors import safe_open

    tensors = {}
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            for k in st.keys():
                tensors[k] = st.get_tensor(k)
    if report.get("pattern") == "structured":
        return 1 - sum(t.numel() for t in tensors.values()) / report["params_before"]
    zeros = total = 0
    for name in report["layers"]:
        w = tensors[f"{name}.weight"]
        zeros += int((w == 0).sum())
        total += w.numel()
    return zeros / total
