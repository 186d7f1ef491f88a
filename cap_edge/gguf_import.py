"""GGUF -> float Hugging Face directory: dequantized weights, the tokenizer rebuilt exactly from
the file (``tokenizer.py``), and the source's metadata that every later export writes back."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch

from .arch import arch_for
from .errors import ModelLoadError
from .io import atomic_dir, write_digests

log = logging.getLogger(__name__)


def gguf_to_hf_dir(gguf_file: Path, out: Path) -> Path:
    """Dequantize a GGUF into a float safetensors HF directory at ``out`` (atomically)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from .tokenizer import exact_tokenizer_supported, gguf_fields, tokenizer_from_gguf

    gguf_file = Path(gguf_file)
    if not gguf_file.is_file():
        raise ModelLoadError(f"GGUF file not found: {gguf_file}")
    fields = gguf_fields(gguf_file)
    try:
        config = AutoConfig.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
        arch_for(config.model_type)
        if exact_tokenizer_supported(fields):
            tok = tokenizer_from_gguf(fields)
        else:  # e.g. SentencePiece vocabularies: transformers' converter, which the exact builder does not cover
            log.warning("%s: tokenizer %r / pre-tokenizer %r not in cap-edge's exact table; using transformers' "
                        "GGUF conversion", gguf_file.name, fields.get("tokenizer.ggml.model"), fields.get("tokenizer.ggml.pre"))
            tok = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
        loaded = AutoModelForCausalLM.from_pretrained(
            gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32
        )
    except ModelLoadError:
        raise
    except Exception as e:  # gguf reader errors are varied; name the file
        if e.__class__.__name__ == "UnsupportedArchitectureError":
            raise
        raise ModelLoadError(f"could not read GGUF {gguf_file}: {e}") from e
    # A model loaded from GGUF carries a quantization config and refuses save_pretrained: copy its
    # weights into a plain model built from the same config without it.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = "float32"
    for key, attr in (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("padding", "pad_token_id")):
        if f"tokenizer.ggml.{key}_token_id" in fields:  # the model config agrees with its tokenizer
            setattr(config, attr, int(fields[f"tokenizer.ggml.{key}_token_id"]))
    fresh = type(loaded)(config)
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    missing = [m for m in missing if not (m == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise ModelLoadError(f"GGUF {gguf_file}: weights do not match the config (missing {missing}, unexpected {unexpected})")
    fresh.tie_weights()
    fresh.generation_config.bos_token_id = config.bos_token_id
    fresh.generation_config.eos_token_id = config.eos_token_id
    fresh.generation_config.pad_token_id = config.pad_token_id
    with atomic_dir(out, overwrite=True) as tmp:
        fresh.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / SOURCE_FILE).write_text(json.dumps(source_metadata(gguf_file, fields), indent=2))
        write_digests(tmp)
    return out


SOURCE_FILE = "cap_edge_source.json"
# GGUF keys carried from the source file into every GGUF cap-edge writes (with the source's values)
SOURCE_KEYS = ("general.license", "general.basename", "general.organization", "general.size_label",
               "tokenizer.ggml.pre", "tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_space_prefix",
               "general.quantization_version")


def source_metadata(gguf_file: Path, fields: dict) -> dict:
    """What a converted directory remembers of its GGUF: its name and the keys an export writes back."""
    return {"gguf": Path(gguf_file).name, "gguf_path": str(Path(gguf_file).resolve()), "name": fields.get("general.name"),
            "gguf_pre": fields.get("tokenizer.ggml.pre"),  # kept for directories converted before "keys"
            "keys": {k: fields[k] for k in SOURCE_KEYS if k in fields}}


def source_info(model_dir: str | os.PathLike) -> dict:
    """The source GGUF's metadata of a converted (or pruned-from-converted) directory, else {}."""
    f = Path(model_dir) / SOURCE_FILE
    try:
        return json.loads(f.read_text()) if f.is_file() else {}
    except ValueError:
        return {}
