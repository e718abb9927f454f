"""A short content hash of a model's files, recorded as its revision."""
from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

WEIGHT_SUFFIXES = {".safetensors", ".bin", ".gguf", ".json", ".model", ".txt"}


def fingerprint(path: str | Path, files: list[Path] | None = None) -> str:
    """sha256 over the weight and config files under ``path`` (or the given files); 'unknown' if none. Memoised per
    file path, size and modification time, so a model's revision is hashed once per process."""
    root = Path(path)
    if files is None:
        if not root.exists():
            return "unknown"
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.suffix in WEIGHT_SUFFIXES)
    if not files:
        return "unknown"
    return _digest(tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files))


@lru_cache(maxsize=256)
def _digest(files: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha256()
    for name, _, _ in files:
        digest.update(Path(name).name.encode())
        with open(name, "rb") as handle:
            while chunk := handle.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()[:16]
