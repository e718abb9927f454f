"""The embedding cache under contention and faults: writes wait for other processes, failures are one line."""
import multiprocessing
import sqlite3
import threading
import time
import zlib

import numpy as np
import pytest

from searchr3_eval.cache import EmbeddingCache, text_hash
from searchr3_eval.errors import UserError


def rows(prefix: str, n: int, dim: int = 16) -> tuple[list[str], np.ndarray]:
    hashes = [text_hash(f"{prefix}-{i}") for i in range(n)]
    return hashes, np.random.default_rng(zlib.crc32(prefix.encode())).standard_normal((n, dim)).astype(np.float32)


def write_many(path: str, prefix: str, n: int, chunk: int) -> None:
    cache = EmbeddingCache(path)
    hashes, vectors = rows(prefix, n)
    for start in range(0, n, chunk):
        cache.put("model", hashes[start : start + chunk], vectors[start : start + chunk], None)
    cache.close()


def test_concurrent_writers_lose_no_row(tmp_path):
    path = str(tmp_path / "cache.sqlite")
    EmbeddingCache(path).close()
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=write_many, args=(path, f"w{w}", 3000, 10)) for w in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=240)
    assert [w.exitcode for w in workers] == [0, 0, 0, 0]
    cache = EmbeddingCache(path)
    for w in range(4):
        hashes, vectors = rows(f"w{w}", 3000)
        found = cache.get("model", hashes)
        assert len(found) == 3000 and np.array_equal(found[hashes[-1]][0], vectors[-1])


def test_a_write_waits_for_a_lock_held_longer_than_sqlites_default_timeout(tmp_path):
    path = tmp_path / "cache.sqlite"
    cache = EmbeddingCache(path)
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    release = threading.Timer(6.0, lambda: holder.execute("COMMIT"))  # the default busy timeout is 5 s
    release.start()
    start = time.monotonic()
    hashes, vectors = rows("late", 5)
    cache.put("model", hashes, vectors, None)
    assert time.monotonic() - start >= 5.5 and len(cache.get("model", hashes)) == 5
    release.join()


def test_a_lock_never_released_is_one_line_naming_the_file(tmp_path):
    path = tmp_path / "cache.sqlite"
    cache = EmbeddingCache(path, lock_wait=0.5)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    with pytest.raises(UserError, match=rf"embedding cache {path}: writing failed \(database is locked\); another"):
        cache.put("model", *rows("x", 3), None)
    holder.execute("ROLLBACK")


def test_a_page_corrupt_in_the_middle_is_one_line_naming_the_file(tmp_path):
    path = tmp_path / "cache.sqlite"
    cache = EmbeddingCache(path)
    hashes, vectors = rows("c", 4000)
    cache.put("model", hashes, vectors, None)
    cache._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    cache.close()
    data = bytearray(path.read_bytes())
    page = 4096
    middle = len(data) // page // 2 * page
    for offset in range(middle, middle + 4 * page, page):  # four pages in the middle of the file
        data[offset : offset + page] = b"\xa5" * page
    path.write_bytes(bytes(data))
    reopened = EmbeddingCache(path)  # opening reads only the first pages
    with pytest.raises(UserError, match=rf"embedding cache {path}: reading failed .*malformed.*move it aside"):
        reopened.get("model", hashes)


def test_a_full_disk_while_writing_is_one_line_and_keeps_earlier_rows(tmp_path):
    path = tmp_path / "cache.sqlite"
    cache = EmbeddingCache(path)
    first, first_vectors = rows("kept", 50)
    cache.put("model", first, first_vectors, None)
    pages = cache._db.execute("PRAGMA page_count").fetchone()[0]
    cache._db.execute(f"PRAGMA max_page_count = {pages + 2}")  # SQLite's own 'database or disk is full'
    with pytest.raises(UserError, match=rf"embedding cache {path}: writing failed \(database or disk is full\); free"):
        cache.put("model", *rows("big", 5000), None)
    assert len(cache.get("model", first)) == 50
