"""A retrieval environment that keeps the corpus index across policy updates.

A full refresh re-encodes every document with the current policy. ``refresh_for_batch`` re-encodes only
what the batch's rewards depend on (its positives and the current top-k candidates of its queries) plus a
round-robin slice, so that every document is refreshed at least once every ``refresh_every`` steps.
"""
from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch

EncodeFn = Callable[[list[str]], torch.Tensor]


@dataclass
class RefreshStats:
    documents: int
    seconds: float


class RetrievalEnvironment:
    def __init__(self, doc_ids: list[str], doc_texts: list[str], encode: EncodeFn, top_k: int = 10, refresh_every: int = 10,
                 state: dict | None = None):
        """``state`` (from ``state()``) restores a saved index instead of encoding the corpus."""
        self.doc_ids, self.doc_texts = doc_ids, doc_texts
        self.position = {d: i for i, d in enumerate(doc_ids)}
        self.encode, self.top_k, self.refresh_every = encode, top_k, max(1, refresh_every)
        if state is not None:
            self.embeddings, self.cursor = state["embeddings"], state["cursor"]
            self.initial_refresh = RefreshStats(**state["initial_refresh"])
        else:
            self.embeddings, self.cursor = np.zeros((0, 0), dtype=np.float32), 0
            self.initial_refresh = self.full_refresh()

    def state(self) -> dict:
        """What a resumed run needs to continue with this index."""
        return {"embeddings": self.embeddings, "cursor": self.cursor, "initial_refresh": asdict(self.initial_refresh)}

    def _refresh(self, rows: list[int]) -> RefreshStats:
        start = time.perf_counter()
        if rows:
            self.embeddings[rows] = self.encode([self.doc_texts[i] for i in rows]).float().cpu().numpy()
        return RefreshStats(len(rows), time.perf_counter() - start)

    def full_refresh(self) -> RefreshStats:
        start = time.perf_counter()
        self.embeddings = self.encode(self.doc_texts).float().cpu().numpy()
        return RefreshStats(len(self.doc_texts), time.perf_counter() - start)

    def candidates(self, query_embeddings: np.ndarray) -> set[int]:
        scores = query_embeddings @ self.embeddings.T
        k = min(self.top_k, scores.shape[1])
        return set(np.argpartition(-scores, k - 1, axis=1)[:, :k].ravel().tolist())

    def refresh_for_batch(self, query_embeddings: np.ndarray, positive_ids: list[str]) -> RefreshStats:
        """Re-encode the batch's positives, its queries' top-k candidates and the next round-robin slice."""
        rows = {self.position[d] for d in positive_ids} | self.candidates(query_embeddings)
        per_step = -(-len(self.doc_ids) // self.refresh_every)
        rows |= {(self.cursor + i) % len(self.doc_ids) for i in range(per_step)}
        self.cursor = (self.cursor + per_step) % len(self.doc_ids)
        return self._refresh(sorted(rows))

    def ranks(self, query_embeddings: np.ndarray, positive_ids: list[str]) -> np.ndarray:
        """1-based rank of each query's positive among all documents."""
        scores = query_embeddings @ self.embeddings.T
        rows = np.array([self.position[d] for d in positive_ids])
        positive = scores[np.arange(len(rows)), rows]
        return 1 + (scores > positive[:, None]).sum(axis=1)

    def rankings(self, query_embeddings: np.ndarray, k: int) -> np.ndarray:
        return np.argsort(-(query_embeddings @ self.embeddings.T), axis=1, kind="stable")[:, :k]


def overlap_at_k(a: np.ndarray, b: np.ndarray) -> float:
    """Mean share of top-k documents two rankings ([Q, k] row indices) have in common."""
    return float(np.mean([len(set(x) & set(y)) / len(x) for x, y in zip(a, b)]))


def agreement_with_fresh_index(env: RetrievalEnvironment, queries: np.ndarray, positive_ids: list[str]) -> dict:
    """Compare ``env``'s maintained index with a freshly encoded copy (``env`` itself is left as it is) on what the
    reward uses (the positive's rank) and on the top 10."""
    fresh = copy.copy(env)
    full = fresh.full_refresh()
    ranks, fresh_ranks = env.ranks(queries, positive_ids), fresh.ranks(queries, positive_ids)
    return {
        "queries_compared": len(positive_ids),
        "full_refresh_seconds": full.seconds,
        "positive_rank_agreement (same rank)": round(float(np.mean(ranks == fresh_ranks)), 3),
        "reward_agreement (1 - mean |1/r - 1/r_fresh|)": round(float(1 - np.mean(np.abs(1 / ranks - 1 / fresh_ranks))), 4),
        "top10_overlap_partial_vs_fresh": round(overlap_at_k(env.rankings(queries, 10), fresh.rankings(queries, 10)), 3),
    }
