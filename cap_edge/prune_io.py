"""Save a pruned model as a standard Hugging Face directory plus ``sparsity.json``."""

from __future__ import annotations

from pathlib import Path

import shutil

from .io import atomic_dir, write_json
from .models import SOURCE_FILE


def save_pruned(model, tokenizer, out: str | Path, report: dict, extra: dict | None = None, overwrite: bool = False,
                source_dir: str | Path | None = None) -> Path:
    """Atomically write safetensors + config + tokenizer + sparsity.json into ``out`` (and the source
    GGUF's metadata from ``source_dir``, so exports keep its tokenizer keys, name and license).

    Refuses a non-empty ``out`` unless ``overwrite``; a failure leaves ``out`` as it was.
    """
    out = Path(out)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / "sparsity.json", {**report, **(extra or {})})
        if source_dir is not None and (Path(source_dir) / SOURCE_FILE).is_file():
            shutil.copy(Path(source_dir) / SOURCE_FILE, tmp / SOURCE_FILE)
    return out
