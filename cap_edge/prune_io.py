"""Save a pruned model as a standard Hugging Face directory plus ``sparsity.json``."""

from __future__ import annotations

from pathlib import Path

from .io import atomic_dir, write_json


def save_pruned(model, tokenizer, out: str | Path, report: dict, extra: dict | None = None, overwrite: bool = False) -> Path:
    """Atomically write safetensors + config + tokenizer + sparsity.json into ``out``.

    Refuses a non-empty ``out`` unless ``overwrite``; a failure leaves ``out`` as it was.
    """
    out = Path(out)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / "sparsity.json", {**report, **(extra or {})})
    return out
