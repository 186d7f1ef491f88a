"""Artifacts: placement out of the staging folder, sha256, raw and compressed sizes, the
self-contained zip bundle, and the manifest (paths relative to the manifest's folder)."""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cap_edge.errors import ExportError
from cap_edge.io import atomic_path, sha256_file, write_json

LICENSE_NOTICE = "LICENSE-NOTICE.txt"
# What a Hugging Face-tokenized runtime (ORT, onnxruntime-genai, optimum) needs beside the model
HF_SIDE_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json", "chat_template.jinja")


@dataclass
class Artifact:
    format: str
    precision: str
    path: str  # the file a runtime loads (absolute while in memory; relative in a manifest)
    files: list[str]  # every model file of the artifact (model + external data)
    sha256: str = ""
    bytes: int = 0
    compressed_bytes: int = 0
    bundle: str = ""
    side_files: list[str] = field(default_factory=list)  # tokenizer, config, chat template beside the model
    metadata: dict = field(default_factory=dict)
    validation: dict = field(default_factory=dict)
    valid: bool | None = None  # None: not validated yet

    def as_dict(self, base: str | Path | None = None) -> dict:
        """A manifest entry; with ``base`` every path is relative to it (the manifest's folder)."""
        d = asdict(self)
        if base is not None:
            rel = lambda p: os.path.relpath(p, base) if p else p  # noqa: E731
            d["path"], d["bundle"] = rel(d["path"]), rel(d["bundle"])
            d["files"] = [rel(f) for f in d["files"]]
            d["side_files"] = [rel(f) for f in d["side_files"]]
        return d


def resolve(entry: dict, base: str | Path) -> dict:
    """A manifest entry with its paths made absolute again (relative to the manifest's folder)."""
    out = dict(entry)
    fix = lambda p: str(Path(base) / p) if p and not Path(p).is_absolute() else p  # noqa: E731
    out["path"], out["bundle"] = fix(entry["path"]), fix(entry.get("bundle", ""))
    out["files"] = [fix(f) for f in entry.get("files", [])]
    out["side_files"] = [fix(f) for f in entry.get("side_files", [])]
    return out


def place(artifact: Artifact, staging: Path, out_dir: Path, model_dir: Path, spec) -> Artifact:
    """Move the artifact's files from ``staging`` to the same relative place under ``out_dir`` and
    put the runtime's side files (``spec.side_files``) beside the model file. A side file already
    there with other content is an error (two models in one folder), never silently replaced."""
    moved = []
    for f in artifact.files:
        dest = out_dir / Path(f).relative_to(staging)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(f, dest)
        moved.append(str(dest))
    artifact.path = moved[artifact.files.index(artifact.path)]
    artifact.files = moved
    home = Path(artifact.path).parent
    sides = []
    for name in spec.side_files:
        src = staging / Path(artifact.path).parent.relative_to(out_dir) / name
        src = src if src.is_file() else model_dir / name
        if not src.is_file():
            continue
        dest = home / name
        if dest.exists() and not filecmp.cmp(src, dest, shallow=False):
            raise ExportError(f"{dest} exists with other content (another model's?); export into an empty folder")
        if not dest.exists():
            shutil.copyfile(src, dest)
            os.chmod(dest, 0o644)
        sides.append(str(dest))
    artifact.side_files = sides
    return artifact


def _license_text(model_dir_meta: dict) -> str:
    lic = model_dir_meta.get("license")
    name = model_dir_meta.get("name") or "the source model"
    return (f"This bundle holds a model derived from {name} by cap-edge (pruning and quantization).\n"
            f"License of the source model: {lic or 'not recorded in the source; check it before redistributing'}.\n"
            "The derived weights stay under the source model's license terms.\n")


def zip_bundle(artifact: Artifact, out: Path, entry: dict, license_meta: dict) -> Path:
    """Deflate-compressed zip of everything the runtime needs: model files, side files (tokenizer,
    config, chat template), this artifact's manifest entry and a license notice. Pruned (zero)
    weights compress well, while the runtime still loads dense tensors."""
    home = Path(artifact.path).parent
    with atomic_path(out) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as z:
            for f in artifact.files + artifact.side_files:
                z.write(f, arcname=os.path.relpath(f, home))
            z.writestr("manifest-entry.json", json.dumps(entry, indent=2, default=str))
            z.writestr(LICENSE_NOTICE, _license_text(license_meta))
    return out


def finalize(artifact: Artifact, out_dir: Path, spec=None, license_meta: dict | None = None) -> Artifact:
    """sha256, raw size, and the bundle ``FORMAT-PRECISION.zip`` beside the model files."""
    artifact.sha256 = sha256_file(artifact.path)
    artifact.bytes = sum(Path(f).stat().st_size for f in artifact.files)
    bundle = Path(out_dir) / f"{artifact.format}-{artifact.precision}.zip"
    artifact.bundle = str(bundle)
    zip_bundle(artifact, bundle, artifact.as_dict(out_dir), license_meta or {})
    artifact.compressed_bytes = bundle.stat().st_size
    return artifact


def update_manifest(out_dir: Path, artifact: Artifact) -> Path:
    """Add or replace this artifact's entry in out_dir/manifest.json (atomic rewrite)."""
    path = Path(out_dir) / "manifest.json"
    data = json.loads(path.read_text()) if path.is_file() else {"artifacts": []}
    entry = artifact.as_dict(out_dir)
    data["artifacts"] = [a for a in data["artifacts"] if a["path"] != entry["path"]] + [entry]
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
