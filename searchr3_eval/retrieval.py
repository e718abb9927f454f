"""Inner-product search with faiss: exact (``flat``, over the corpus in blocks, so memory-mapped embeddings larger
than RAM can be searched) or approximate (``ivf``, ``hnsw``).

An index is named ``kind[:param=value,...]``, e.g. ``ivf:nprobe=32`` or ``hnsw:ef_search=512``; its canonical name
(every parameter spelled out) is part of a result's identity.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import faiss
import numpy as np
from faiss.contrib.exhaustive_search import knn_ground_truth
from tqdm.auto import tqdm

from searchr3_eval.errors import UserError
from searchr3_eval.metrics import Run

INDEX_DEFAULTS: dict[str, dict[str, int]] = {
    "flat": {},
    "ivf": {"nlist": 0, "nprobe": 16},  # nlist 0: min(4 sqrt(N), N / 39), faiss's rule of thumb and training minimum
    "hnsw": {"m": 32, "ef_construction": 200, "ef_search": 256},
}
BLOCK_ROWS = 65536  # corpus rows read (from RAM or a memory-mapped file) and searched at a time


@dataclass(frozen=True)
class IndexSpec:
    kind: str
    params: tuple[tuple[str, int], ...] = ()

    @property
    def name(self) -> str:
        return self.kind + (":" + ",".join(f"{k}={v}" for k, v in self.params) if self.params else "")

    def get(self, key: str) -> int:
        return dict(self.params)[key]


def parse_index(text: str) -> IndexSpec:
    """``flat``, ``ivf`` or ``hnsw`` with optional ``:param=value,...`` overrides; a ``UserError`` otherwise."""
    kind, _, rest = text.strip().partition(":")
    if kind not in INDEX_DEFAULTS:
        raise UserError(f"unknown index {kind!r}; use one of {', '.join(INDEX_DEFAULTS)}")
    params = dict(INDEX_DEFAULTS[kind])
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, _, value = item.partition("=")
        if key not in params:
            known = ", ".join(params) or "none"
            raise UserError(f"index {kind} has no parameter {key!r} (parameters: {known})")
        if not value.isdigit() or (int(value) < 1 and key != "nlist"):
            raise UserError(f"index parameter {key} must be a positive integer, not {value!r}")
        params[key] = int(value)
    return IndexSpec(kind, tuple(sorted(params.items())))


def _blocks(emb: np.ndarray, block_rows: int, show_progress: bool, what: str) -> Iterator[np.ndarray]:
    for start in tqdm(range(0, len(emb), block_rows), desc=what, disable=not show_progress or len(emb) <= block_rows):
        yield np.ascontiguousarray(emb[start : start + block_rows], dtype=np.float32)


def build_index(spec: IndexSpec, doc_emb: np.ndarray, block_rows: int = BLOCK_ROWS, show_progress: bool = False,
                seed: int = 0) -> faiss.Index:
    """An approximate index over ``doc_emb`` (ivf: trained on a seeded sample of at most 64 rows per list)."""
    n, dim = doc_emb.shape
    if spec.kind == "ivf":
        nlist = spec.get("nlist") or max(1, min(int(4 * math.sqrt(n)), n // 39))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, min(nlist, n), faiss.METRIC_INNER_PRODUCT)
        sample = np.sort(np.random.default_rng(seed).choice(n, min(n, 64 * index.nlist), replace=False))
        index.train(np.ascontiguousarray(doc_emb[sample], dtype=np.float32))
        index.nprobe = spec.get("nprobe")
    elif spec.kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, spec.get("m"), faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = spec.get("ef_construction")
    else:
        raise ValueError(f"{spec.kind} is searched exactly, without an index")
    for block in _blocks(doc_emb, block_rows, show_progress, "index"):
        index.add(block)
    return index


def dense_search(
    query_ids: list[str],
    query_emb: np.ndarray,
    doc_ids: list[str],
    doc_emb: np.ndarray,
    top_k: int = 100,
    index: str | IndexSpec = "flat",
    block_rows: int = BLOCK_ROWS,
    show_progress: bool = True,
) -> Run:
    """Top-``top_k`` documents per query by inner product (cosine for normalised embeddings). ``doc_emb`` may be a
    memory-mapped array: flat search reads it ``block_rows`` at a time and keeps only a running top-k in RAM."""
    spec = parse_index(index) if isinstance(index, str) else index
    k = min(top_k, len(doc_ids))
    queries = np.ascontiguousarray(query_emb, dtype=np.float32)
    if spec.kind == "flat":
        blocks = _blocks(doc_emb, block_rows, show_progress, "search")
        scores, idx = knn_ground_truth(queries, blocks, k, metric_type=faiss.METRIC_INNER_PRODUCT)
    else:
        searcher = build_index(spec, doc_emb, block_rows, show_progress)
        if spec.kind == "hnsw":
            searcher.hnsw.efSearch = max(spec.get("ef_search"), k)
        scores, idx = searcher.search(queries, k)
    return {qid: {doc_ids[i]: float(s) for s, i in zip(row_scores, row_idx) if i >= 0}
            for qid, row_scores, row_idx in zip(query_ids, scores, idx)}
