"""Device profiles: TOML data files validated into frozen configs at load.

An unknown key or a wrong type is an error naming the file, the key and the expected type. Users
pass their own profile by path (``--device ./my-board.toml``). Detectors say whether this machine
is the profile's device (used by the pytest ``device`` marker).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from cap_edge.config import BudgetConfig, PruneConfig, SearchConfig, TargetConfig
from cap_edge.errors import ConfigError

PROFILE_DIR = Path(__file__).resolve().parent


class ProfileError(ConfigError):
    """A device profile file is missing, malformed or invalid."""


@dataclass(frozen=True)
class ExportSpec:
    outputs: tuple[str, ...]  # "FORMAT:PRECISION" entries of exporters.formats.FORMATS, e.g. "gguf:q8_0"
    # onnx-static: fixed-shape prefill/decode graphs, static QDQ (exporters/onnx_static.py)
    static_chunk: int = 64  # prefill graph's fixed token count
    keep_float: tuple[str, ...] = ()  # node-name substrings left unquantized (mixed precision)
    op_table: str = ""  # device_profiles/ops/NAME.toml: ops the target execution provider takes
    unsupported_ops: str = "warn"  # "warn" or "fail" when a graph has ops outside op_table
    handoff: str = ""  # "jetson": the build writes jetson/ (trtexec, TensorRT Edge-LLM, llama.cpp CUDA, bench scripts)

    def pairs(self) -> list[tuple[str, str]]:
        """[(format, precision), ...] in the profile's order."""
        return [tuple(o.rsplit(":", 1)) for o in self.outputs]


@dataclass(frozen=True)
class RuntimeSpec:
    onnx_providers: tuple[str, ...] = ("CPUExecutionProvider",)
    llamacpp_gpu_layers: int = 0
    context_length: int = 2048
    provider_options: dict = field(default_factory=dict)  # provider name -> {option: value}


@dataclass(frozen=True)
class HardwareSpec:
    memory_budget_mb: float
    memory_bandwidth_gbs: float
    dense_tops: float
    sparse_tops: float
    sparse_pattern: str  # the sparsity pattern the device's runtime exploits, or "none"


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    description: str
    detector: str
    budget: BudgetConfig
    prune: PruneConfig
    export: ExportSpec
    runtime: RuntimeSpec
    hardware: HardwareSpec
    search: SearchConfig = SearchConfig(enabled=False)  # no [search] table: the fixed [prune] configuration
    targets: TargetConfig = TargetConfig()
    path: str = ""


DETECTORS = ("host", "jetson", "qnn", "raspberry-pi")
JETSON_RELEASE = Path("/etc/nv_tegra_release")  # present on every L4T (Jetson Linux) system
DEVICE_TREE_MODEL = Path("/proc/device-tree/model")
_OLD_OUTPUT_KEYS = ("formats", "onnx_precisions", "gguf_precisions", "static_precisions")
_RENAMED = {k: ' (formats and per-format precision lists became one list: outputs = ["gguf:q8_0", "onnx:int8"])'
            for k in _OLD_OUTPUT_KEYS}
_NESTED = {"budget": BudgetConfig, "prune": PruneConfig, "export": ExportSpec, "runtime": RuntimeSpec, "hardware": HardwareSpec,
           "search": SearchConfig, "targets": TargetConfig}
# PruneConfig fields a profile may set (the rest are algorithm internals)
_PROFILE_FIELDS = {PruneConfig: ("method", "sparsity", "pattern", "min_heads", "scope", "stats_problems", "channel_refine",
                                  "nm_dense", "nm_dense_by"),
                   BudgetConfig: ("problems", "tokens_per_problem", "seconds", "score_mode")}


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp)).replace("NoneType", "none")


def _check(value, tp, where: str):
    """Return value converted to tp, or raise ProfileError naming where and the expected type."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        return _check(value, next(a for a in args if a is not type(None)), where)
    if origin is tuple:
        inner = typing.get_args(tp)[0]
        if not isinstance(value, list):
            raise ProfileError(f"{where}: expected a list of {_type_name(inner)}, got {type(value).__name__} ({value!r})")
        return tuple(_check(v, inner, f"{where}[{i}]") for i, v in enumerate(value))
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ProfileError(f"{where}: expected float, got {type(value).__name__} ({value!r})")
        return float(value)
    if tp is dict:
        if not isinstance(value, dict):
            raise ProfileError(f"{where}: expected a table, got {type(value).__name__}")
        return {k: dict(v) if isinstance(v, dict) else v for k, v in value.items()}
    if tp in (int, str, bool):
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise ProfileError(f"{where}: expected {tp.__name__}, got {type(value).__name__} ({value!r})")
        return value
    raise ProfileError(f"{where}: unsupported type {tp}")


def _build(cls, data: dict, where: str):
    if not isinstance(data, dict):
        raise ProfileError(f"{where}: expected a table, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    allowed = _PROFILE_FIELDS.get(cls, tuple(f.name for f in dataclasses.fields(cls) if f.name != "path"))
    unknown = [k for k in data if k not in allowed]
    if unknown:
        hint = _RENAMED.get(unknown[0], "")
        raise ProfileError(f"{where}: unknown key '{unknown[0]}'; expected one of: {', '.join(allowed)}{hint}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in allowed:
            continue
        key = f"{where}.{f.name}" if where.count(":") else f"{where}: key '{f.name}'"
        if f.name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ProfileError(f"{key}: required key is missing")
            continue
        if f.name in _NESTED and cls is DeviceProfile:
            kwargs[f.name] = _build(_NESTED[f.name], data[f.name], f"{where} [{f.name}]")
        else:
            kwargs[f.name] = _check(data[f.name], hints[f.name], f"{where}: key '{f.name}'")
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ProfileError(f"{where}: {e}") from e


def _positive(where: str, section: str, key: str, value, allow_zero: bool = False) -> None:
    if not (value >= 0 if allow_zero else value > 0):
        raise ProfileError(f"{where} [{section}]: key '{key}' expected a {'non-negative' if allow_zero else 'positive'} "
                           f"number, got {value!r}")


def _validate(p: DeviceProfile, where: str) -> DeviceProfile:
    """Cross-field and range checks, each naming the key at fault (checked in dependency order)."""
    from exporters.formats import parse_output  # profile data is checked against the format registry

    from cap_edge.errors import ExportError

    if p.detector not in DETECTORS:
        raise ProfileError(f"{where}: key 'detector' expected one of {', '.join(DETECTORS)}, got {p.detector!r}")
    hw, rt, ex = p.hardware, p.runtime, p.export
    for key in ("memory_budget_mb", "memory_bandwidth_gbs", "dense_tops", "sparse_tops"):
        _positive(where, "hardware", key, getattr(hw, key))
    if hw.sparse_tops < hw.dense_tops:
        raise ProfileError(f"{where} [hardware]: key 'sparse_tops' expected >= dense_tops ({hw.dense_tops}), got {hw.sparse_tops}")
    if hw.sparse_pattern not in ("none", "2:4", "4:8"):
        raise ProfileError(f"{where} [hardware]: key 'sparse_pattern' expected none, 2:4 or 4:8, got {hw.sparse_pattern!r}")
    _positive(where, "runtime", "context_length", rt.context_length)
    _positive(where, "runtime", "llamacpp_gpu_layers", rt.llamacpp_gpu_layers, allow_zero=True)
    if not rt.onnx_providers:
        raise ProfileError(f"{where} [runtime]: key 'onnx_providers' expected at least one provider, got []")
    if not ex.outputs:
        raise ProfileError(f"{where} [export]: key 'outputs' expected at least one FORMAT:PRECISION, got []")
    for o in ex.outputs:
        try:
            parse_output(o)
        except ExportError as e:
            raise ProfileError(f"{where} [export]: key 'outputs' entry {o!r}: {e}") from e
    if len(set(ex.outputs)) != len(ex.outputs):
        raise ProfileError(f"{where} [export]: key 'outputs' lists an output twice: {list(ex.outputs)}")
    if ex.handoff not in ("", "jetson"):
        raise ProfileError(f"{where} [export]: key 'handoff' expected \"\" or jetson, got {ex.handoff!r}")
    if ex.unsupported_ops not in ("warn", "fail"):
        raise ProfileError(f"{where} [export]: key 'unsupported_ops' expected warn or fail, got {ex.unsupported_ops!r}")
    if not 1 <= ex.static_chunk <= rt.context_length:
        raise ProfileError(f"{where} [export]: key 'static_chunk' expected 1..context_length ({rt.context_length}), "
                           f"got {ex.static_chunk}")
    if ex.op_table:
        from exporters.op_coverage import load_op_table

        try:
            load_op_table(ex.op_table)
        except ConfigError as e:
            raise ProfileError(f"{where} [export]: key 'op_table': {e}") from e
    return p


def load_profile(name_or_path: str | os.PathLike) -> DeviceProfile:
    """A built-in profile by name (``cpu``, ``jetson-orin``, ...) or a TOML file by path."""
    s = str(name_or_path)
    path = Path(s) if (s.endswith(".toml") or os.sep in s) else PROFILE_DIR / f"{s}.toml"
    if not path.is_file():
        if path.parent == PROFILE_DIR:
            raise ProfileError(f"unknown device {s!r}; known: {', '.join(list_profiles())} (or pass a .toml path)")
        raise ProfileError(f"device profile file not found: {path}")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ProfileError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); a profile is a TOML text file") from e
    except tomllib.TOMLDecodeError as e:
        raise ProfileError(f"{path}: not valid TOML ({e})") from e
    prof = _build(DeviceProfile, data, str(path))
    return _validate(dataclasses.replace(prof, path=str(path)), str(path))


def list_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))


def detect(profile: DeviceProfile) -> tuple[bool, str]:
    """(present, reason): is this machine the profile's device?"""
    if profile.detector == "host":
        return True, "the host CPU is always present"
    if profile.detector == "jetson":
        ok = JETSON_RELEASE.exists()
        return ok, f"found {JETSON_RELEASE}" if ok else f"no {JETSON_RELEASE}: not a Jetson"
    if profile.detector == "qnn":
        import onnxruntime as ort

        ok = "QNNExecutionProvider" in ort.get_available_providers()
        return ok, "QNN execution provider available" if ok else "ONNX Runtime has no QNNExecutionProvider here"
    if profile.detector == "raspberry-pi":
        ok = DEVICE_TREE_MODEL.exists() and "Raspberry Pi" in DEVICE_TREE_MODEL.read_text(errors="ignore")
        return ok, "Raspberry Pi device tree" if ok else f"{DEVICE_TREE_MODEL} does not name a Raspberry Pi"
    return False, f"unknown detector {profile.detector!r}"
