"""Atomic file writes, content hashes and the cache directory."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def cache_dir() -> Path:
    """``$CAP_EDGE_CACHE``, else ``$XDG_CACHE_HOME/cap-edge``, else ``~/.cache/cap-edge``."""
    env = os.environ.get("CAP_EDGE_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "cap-edge"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    A crash or exception leaves no half-written file under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; artifacts must be readable in containers
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
    return Path(path)


DIGESTS_FILE = "cap_edge_cache.json"


def write_digests(path: Path) -> None:
    """Record the sha256 of every file of a directory (a cache entry), for ``verify_digests``."""
    digests = {p.name: sha256_file(p) for p in sorted(Path(path).iterdir()) if p.is_file() and p.name != DIGESTS_FILE}
    (Path(path) / DIGESTS_FILE).write_text(json.dumps({"sha256": digests}, indent=2))


def verify_digests(path: Path) -> bool:
    """True when every file recorded by ``write_digests`` is present with the same sha256."""
    meta = Path(path) / DIGESTS_FILE
    try:
        expected = json.loads(meta.read_text())["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if not isinstance(expected, dict) or not expected:
        return False
    return all((Path(path) / n).is_file() and sha256_file(Path(path) / n) == d for n, d in expected.items())


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; it replaces ``path`` only on success.

    Refuses a non-empty ``path`` unless ``overwrite``.
    """
    path = Path(path)
    if path.exists() and any(path.iterdir()) and not overwrite:
        from .errors import ConfigError

        raise ConfigError(f"output directory {path} is not empty (pass --overwrite to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def check_output_dir(path: str | os.PathLike, overwrite: bool = False, what: str = "output", need_bytes: int = 0) -> None:
    """Before any work: refuse an output path that is a file, a non-empty directory (unless
    ``overwrite``, which then empties it), a location that is not writable, or a disk with less free
    space than ``need_bytes``. Raises ConfigError naming the path."""
    from .errors import ConfigError

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{what} path {path} is a file; expected a directory")
    if path.is_dir() and any(path.iterdir()):
        if not overwrite:
            raise ConfigError(f"{what} directory {path} is not empty (pass --overwrite to replace its contents)")
        for child in path.iterdir():
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    parent = path
    while not parent.exists():
        parent = parent.parent
    try:  # try it: permission bits say nothing for root, read-only mounts or pseudo file systems
        fd, probe = tempfile.mkstemp(prefix=".cap-edge-write-test.", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ConfigError(f"{what} directory {path}: {parent} is not writable ({e.strerror})") from e
    if need_bytes:
        free = shutil.disk_usage(parent).free
        if free < need_bytes:
            raise ConfigError(f"{what} directory {path}: needs about {need_bytes / 2**20:.0f} MB, "
                              f"{free / 2**20:.0f} MB free on that disk")
