"""Exact inner-product search with faiss, batched over queries."""
from __future__ import annotations

import faiss
import numpy as np
from tqdm.auto import tqdm

from searchr3_eval.metrics import Run


def dense_search(
    query_ids: list[str],
    query_emb: np.ndarray,
    doc_ids: list[str],
    doc_emb: np.ndarray,
    top_k: int = 100,
    batch_size: int = 256,
    show_progress: bool = True,
) -> Run:
    """Top-``top_k`` documents per query by inner product (cosine for normalised embeddings)."""
    index = faiss.IndexFlatIP(doc_emb.shape[1])
    index.add(np.ascontiguousarray(doc_emb, dtype=np.float32))
    k = min(top_k, len(doc_ids))
    run: Run = {}
    starts = range(0, len(query_ids), batch_size)
    for start in tqdm(starts, desc="search", disable=not show_progress):
        batch = np.ascontiguousarray(query_emb[start : start + batch_size], dtype=np.float32)
        scores, idx = index.search(batch, k)
        for qid, row_scores, row_idx in zip(query_ids[start : start + batch_size], scores, idx):
            run[qid] = {doc_ids[i]: float(s) for s, i in zip(row_scores, row_idx) if i >= 0}
    return run
