"""On-disk embedding cache: one SQLite file, keyed by encoder settings + kind + text hash."""
from __future__ import annotations

import hashlib
import os
import sqlite3
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from searchr3_eval.errors import UserError


def default_cache_dir() -> Path:
    """Where embeddings and converted models are kept: $SEARCHR3_CACHE, else ~/.cache/searchr3-eval."""
    return Path(os.environ.get("SEARCHR3_CACHE", Path.home() / ".cache" / "searchr3-eval"))


def cache_file(folder: str | Path | None = None) -> Path:
    """The embedding cache's file in ``folder`` (default ``default_cache_dir()``)."""
    return Path(folder or default_cache_dir()) / "embeddings.sqlite"


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


LOCK_WAIT_SECONDS = 300.0  # how long a write waits for another process's lock on the cache


def _advice(exc: sqlite3.Error) -> str:
    """What to do about a cache error, by SQLite's message."""
    message = str(exc)
    if "full" in message:
        return "free disk space or point --cache-dir elsewhere, or run with --no-cache"
    if "locked" in message or "busy" in message:
        return f"another process held it for over {LOCK_WAIT_SECONDS:.0f} s; retry, or use another --cache-dir"
    return "move it aside or delete it to rebuild the cache, or run with --no-cache"


class EmbeddingCache:
    """Stores float32 vectors (and optional reasoning text) so a re-run does not re-encode. Several processes may
    share one file: a write waits for another's lock (``LOCK_WAIT_SECONDS``); every SQLite failure is a
    ``UserError`` naming the file, and rows are committed per ``put``, so a row once written is never lost."""

    def __init__(self, path: str | Path, lock_wait: float = LOCK_WAIT_SECONDS):
        self.path = Path(path)
        self.lock_wait = lock_wait
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=lock_wait, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS embeddings (model_key TEXT, text_hash TEXT, vector BLOB, "
                "reasoning TEXT, PRIMARY KEY (model_key, text_hash))"
            )
            self._db.execute("SELECT model_key, text_hash, vector, reasoning FROM embeddings LIMIT 1").fetchall()
        except (sqlite3.DatabaseError, OSError) as exc:
            raise UserError(
                f"embedding cache {self.path} cannot be used ({exc}); move it aside or delete it to rebuild "
                "the cache, or run with --no-cache"
            ) from exc

    @contextmanager
    def _guarded(self, doing: str):
        try:
            yield
        except sqlite3.Error as exc:
            raise UserError(f"embedding cache {self.path}: {doing} failed ({exc}); {_advice(exc)}") from exc

    def get(self, model_key: str, hashes: list[str]) -> dict[str, tuple[np.ndarray, str | None]]:
        found: dict[str, tuple[np.ndarray, str | None]] = {}
        with self._guarded("reading"):
            for start in range(0, len(hashes), 500):
                chunk = hashes[start : start + 500]
                rows = self._db.execute(
                    f"SELECT text_hash, vector, reasoning FROM embeddings WHERE model_key = ? "
                    f"AND text_hash IN ({','.join('?' * len(chunk))})",
                    [model_key, *chunk],
                ).fetchall()
                for h, blob, reasoning in rows:
                    found[h] = (np.frombuffer(blob, dtype=np.float32), reasoning)
        return found

    def put(self, model_key: str, hashes: list[str], vectors: np.ndarray, reasoning: list[str] | None) -> None:
        rows = [
            (model_key, h, np.asarray(v, dtype=np.float32).tobytes(), reasoning[i] if reasoning else None)
            for i, (h, v) in enumerate(zip(hashes, vectors))
        ]
        with self._guarded("writing"):
            # take the write lock first (waiting up to lock_wait for another process's): a deferred transaction
            # that has to upgrade its lock is refused at once instead of waiting
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?, ?)", rows)
                self._db.execute("COMMIT")
            finally:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")

    def close(self) -> None:
        self._db.close()
