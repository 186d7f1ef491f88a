"""Will it run on the NPU? Every op of an ONNX graph looked up in a table of the ops a target
execution provider supports (data: ``device_profiles/ops/NAME.toml``, each with its source)."""

from __future__ import annotations

import tomllib
from collections import Counter
from pathlib import Path

from cap_edge.errors import ConfigError

OPS_DIR = Path(__file__).resolve().parent.parent / "device_profiles" / "ops"


def load_op_table(name_or_path: str) -> dict:
    """{"name", "source", "ops": {domain:op -> note}} from a table file; unknown keys are errors."""
    p = Path(name_or_path)
    if not p.is_file():
        p = OPS_DIR / f"{name_or_path}.toml"
    if not p.is_file():
        known = ", ".join(sorted(x.stem for x in OPS_DIR.glob("*.toml")))
        raise ConfigError(f"op table {name_or_path!r} not found; known: {known}")
    data = tomllib.loads(p.read_text())
    unknown = set(data) - {"name", "source", "ops"}
    if unknown:
        raise ConfigError(f"{p}: unknown key {sorted(unknown)[0]!r}; expected name, source, ops")
    if not isinstance(data.get("ops"), dict) or not data["ops"]:
        raise ConfigError(f"{p}: expected an [ops] table of 'domain:Op' = 'note'")
    return {"name": data.get("name", p.stem), "source": data.get("source", ""), "ops": data["ops"], "path": str(p)}


def _key(node) -> str:
    domain = node.domain or "ai.onnx"
    return f"{domain}:{node.op_type}"


def check_ops(onnx_path: str | Path, table: str | dict) -> dict:
    """Count each op of the graph; list those absent from the table with count and node names."""
    import onnx

    t = load_op_table(table) if isinstance(table, str) else table
    g = onnx.load(str(onnx_path), load_external_data=False).graph
    # Constant nodes are data: ONNX Runtime folds them into initializers before partitioning
    nodes = [n for n in g.node if not (n.op_type == "Constant" and (n.domain or "ai.onnx") == "ai.onnx")]
    counts = Counter(_key(n) for n in nodes)
    unsupported = {}
    for n in nodes:
        k = _key(n)
        if k not in t["ops"]:
            e = unsupported.setdefault(k, {"count": counts[k], "nodes": []})
            if len(e["nodes"]) < 5:
                e["nodes"].append(n.name or f"#{nodes.index(n)} ({n.op_type})")
    return {"table": t["name"], "source": t["source"], "ops": dict(sorted(counts.items())),
            "unsupported": unsupported, "supported_fraction": 1 - sum(v["count"] for v in unsupported.values()) / max(1, len(nodes)),
            "ok": not unsupported}
