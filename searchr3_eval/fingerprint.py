"""A short content hash of a model's files, recorded as its revision."""
from __future__ import annotations

import hashlib
from pathlib import Path

WEIGHT_SUFFIXES = {".safetensors", ".bin", ".gguf", ".json", ".model", ".txt"}


def fingerprint(path: str | Path, files: list[Path] | None = None) -> str:
    """sha256 over the weight and config files under ``path`` (or the given files); 'unknown' if none."""
    root = Path(path)
    if files is None:
        if not root.exists():
            return "unknown"
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.suffix in WEIGHT_SUFFIXES)
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode())
        with open(file, "rb") as handle:
            while chunk := handle.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()[:16] if files else "unknown"
