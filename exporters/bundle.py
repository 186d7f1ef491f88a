"""Artifacts: atomic placement, sha256, raw and compressed sizes, and the manifest."""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cap_edge.io import atomic_path, sha256_file, write_json


@dataclass
class Artifact:
    format: str
    precision: str
    path: str  # the file a runtime loads
    files: list[str]  # every file of the artifact (model + external data)
    sha256: str = ""
    bytes: int = 0
    compressed_bytes: int = 0
    bundle: str = ""
    metadata: dict = field(default_factory=dict)
    validation: dict = field(default_factory=dict)
    valid: bool | None = None  # None: not validated yet

    def as_dict(self) -> dict:
        return asdict(self)


def zip_bundle(files: list[Path], out: Path) -> Path:
    """Deflate-compressed zip of the artifact files: pruned (zero) weights compress well, while the
    runtime still loads dense tensors (ONNX Runtime densifies sparse initializers anyway)."""
    with atomic_path(out) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as z:
            for f in files:
                z.write(f, arcname=f.name)
    return out


def finalize(artifact: Artifact, out_dir: Path) -> Artifact:
    files = [Path(f) for f in artifact.files]
    artifact.sha256 = sha256_file(artifact.path)
    artifact.bytes = sum(f.stat().st_size for f in files)
    bundle = zip_bundle(files, out_dir / (Path(artifact.path).stem + f".{artifact.precision}.zip"))
    artifact.bundle = str(bundle)
    artifact.compressed_bytes = bundle.stat().st_size
    return artifact


def update_manifest(out_dir: Path, artifact: Artifact) -> Path:
    """Add or replace this artifact's entry in out_dir/manifest.json (atomic rewrite)."""
    path = Path(out_dir) / "manifest.json"
    data = json.loads(path.read_text()) if path.is_file() else {"artifacts": []}
    data["artifacts"] = [a for a in data["artifacts"] if a["path"] != artifact.path] + [artifact.as_dict()]
    write_json(path, data)
    return path


def move_into(src_files: list[Path], dest_dir: Path) -> list[Path]:
    dest_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for f in src_files:
        target = dest_dir / f.name
        os.replace(f, target) if f.parent.stat().st_dev == dest_dir.stat().st_dev else shutil.move(f, target)
        out.append(target)
    return out
