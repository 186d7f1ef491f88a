"""onnxruntime-genai folders: ``model.onnx`` + ``genai_config.json`` + tokenizer files + chat
template, the layout ONNX Runtime's LLM runtime for Android/iOS apps loads with ``og.Model(DIR)``.

The graph is the optimum export (unstructured models) or the explicit-cache graph in its ``padded``
layout (structurally pruned models: genai allocates one K/V shape for every layer, so each layer's
cache carries the largest K/V head count, zero heads where a layer has fewer). Precisions fp32, int8
and int4 (weight-only MatMulNBits, which genai runs through ORT). Batch size 1.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from cap_edge.errors import ExportError

from .bundle import HF_SIDE_FILES, Artifact, move_into

PRECISIONS = ("fp32", "int8", "int4")


def genai_config(config, tokenizer, filename: str, structured: bool) -> dict:
    """The genai_config.json of a decoder-only Llama-family graph with the optimum I/O names."""
    from cap_edge.arch import head_geometry
    from cap_edge.structure import layer_sizes

    g = head_geometry(config)
    kv = max(layer_sizes(config)["num_kv_heads"]) if structured else g.num_kv_heads
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    return {
        "model": {
            "bos_token_id": tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos,
            "eos_token_id": eos, "pad_token_id": pad, "context_length": int(config.max_position_embeddings),
            "vocab_size": int(config.vocab_size), "type": "llama",
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": filename, "head_size": g.head_dim, "hidden_size": int(config.hidden_size),
                "num_attention_heads": g.num_heads, "num_hidden_layers": g.num_layers, "num_key_value_heads": kv,
                "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask", "position_ids": "position_ids",
                           "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"},
                "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                            "present_value_names": "present.%d.value"},
            },
        },
        "search": {"diversity_penalty": 0.0, "do_sample": False, "early_stopping": True, "length_penalty": 1.0,
                   "max_length": int(config.max_position_embeddings), "min_length": 0, "no_repeat_ngram_size": 0,
                   "num_beams": 1, "num_return_sequences": 1, "past_present_share_buffer": False,
                   "repetition_penalty": 1.0, "temperature": 1.0, "top_k": 1, "top_p": 1.0},
    }


def export_genai(model_dir: str | Path, out_dir: str | Path, precision: str = "int4", metadata: dict | None = None) -> Artifact:
    from transformers import AutoTokenizer

    from cap_edge.models import load_config
    from cap_edge.structure import is_structured

    from .onnx import _fp32_export, _metadata, _save, convert, pruned_zeros_kept

    if precision not in PRECISIONS:
        raise ExportError(f"genai precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    config = load_config(model_dir)
    if config.model_type not in ("llama", "mistral"):
        raise ExportError(f"genai export supports llama and mistral graphs; {model_dir} is {config.model_type!r}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except Exception as e:  # a genai folder is useless without the tokenizer
        raise ExportError(f"{model_dir}: could not load the tokenizer ({e}); a genai folder needs it") from e
    structured = is_structured(config)
    folder = out_dir / f"genai-{precision}"
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".genai-") as tmp:
        work = Path(tmp)
        src = _fp32_export(model_dir, work / "fp32", kv_layout="padded" if structured else "dynamic")
        m = convert(src, precision)
        _metadata(m, {"precision": precision, **(metadata or {})})
        files = _save(m, work / "model.onnx")
        zeros = pruned_zeros_kept(src, work / "model.onnx") if precision != "fp32" else None
        (work / "genai_config.json").write_text(json.dumps(genai_config(config, tokenizer, "model.onnx", structured), indent=2))
        placed = move_into(files + [work / "genai_config.json"], folder)
        for name in HF_SIDE_FILES:  # tokenizer.json, tokenizer_config.json, chat template: genai reads them
            if (model_dir / name).is_file():
                shutil.copy(model_dir / name, folder / name)
                placed.append(folder / name)
    meta = dict(metadata or {}, genai_layout="padded" if structured else "optimum", batch_size=1)
    if zeros is not None:
        meta["quantized_zeros"] = zeros
        if not zeros["ok"] and zeros["checked_weights"]:
            raise ExportError(f"genai {precision}: quantization turned pruned zeros non-zero in {zeros['zeros_broken_in'][:3]}")
    # the folder is the artifact: a runtime loads og.Model(folder)
    return Artifact("genai", precision, str(placed[0]), [str(p) for p in placed], metadata=meta)
