"""A retrieval environment that keeps the corpus index across policy updates.

A full refresh re-encodes every document with the current policy. ``refresh_for_batch`` re-encodes only
what the batch's rewards depend on plus a round-robin slice, so that every document is refreshed at least once every
``refresh_every`` steps. A reward is the positive's rank, which a stale document changes only if its score crosses the
positive's; so after the positives, it re-encodes each query's top-k candidates and its *rank band*: the documents
scoring within the band of the positive, the only ones whose staleness can move the rank while their scores have
drifted by less than the band. The band is fixed (``rank_band``) or measured (``drift_band``): the round-robin slice
holds the index's oldest documents, so re-encoding it first shows how far this query's scores have drifted since
the policy last encoded them; each query's band is ``drift_band`` times the largest change seen.
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
                 rank_band: float = 0.0, drift_band: float = 0.0, state: dict | None = None):
        """``state`` (from ``state()``) restores a saved index instead of encoding the corpus. With both ``rank_band``
        and ``drift_band`` each query's band is the wider of the two."""
        self.doc_ids, self.doc_texts = doc_ids, doc_texts
        self.position = {d: i for i, d in enumerate(doc_ids)}
        self.encode, self.top_k, self.refresh_every = encode, top_k, max(1, refresh_every)
        self.rank_band, self.drift_band = rank_band, drift_band
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

    def _top_k(self, scores: np.ndarray) -> set[int]:
        k = min(self.top_k, scores.shape[1])
        return set(np.argpartition(-scores, k - 1, axis=1)[:, :k].ravel().tolist())

    @staticmethod
    def _band(scores: np.ndarray, positive_rows: list[int], band: np.ndarray) -> set[int]:
        """Documents scoring within ``band[i]`` of query i's positive."""
        positive = scores[np.arange(len(positive_rows)), positive_rows]
        return set(np.nonzero(np.abs(scores - positive[:, None]) <= band[:, None])[1].tolist())

    def refresh_for_batch(self, query_embeddings: np.ndarray, positive_ids: list[str]) -> RefreshStats:
        """Re-encode the batch's positives and the next round-robin slice; then its queries' top-k candidates and rank
        bands, scored against them."""
        positive_rows = [self.position[d] for d in positive_ids]
        per_step = -(-len(self.doc_ids) // self.refresh_every)
        slice_rows = sorted({(self.cursor + i) % len(self.doc_ids) for i in range(per_step)})
        self.cursor = (self.cursor + per_step) % len(self.doc_ids)
        held = self.embeddings[slice_rows] if self.drift_band > 0 else None  # a copy: the slice as the index held it
        first_rows = set(positive_rows) | set(slice_rows)
        first = self._refresh(sorted(first_rows))
        band = np.full(len(query_embeddings), self.rank_band, dtype=np.float32)
        if held is not None:
            drift = np.abs(query_embeddings @ (self.embeddings[slice_rows] - held).T).max(axis=1)
            band = np.maximum(band, self.drift_band * drift)
        scores = query_embeddings @ self.embeddings.T
        rows = self._top_k(scores)
        if band.max() > 0:
            rows |= self._band(scores, positive_rows, band)
        second = self._refresh(sorted(rows - first_rows))
        return RefreshStats(first.documents + second.documents, first.seconds + second.seconds)

    def ranks(self, query_embeddings: np.ndarray, positive_ids: list[str]) -> np.ndarray:
        """1-based rank of each query's positive among all documents."""
        return positive_ranks(query_embeddings @ self.embeddings.T, [self.position[d] for d in positive_ids])

    def rank_ranges(self, query_embeddings: np.ndarray, positive_ids: list[str], tolerance: float) -> np.ndarray:
        """[Q, 2]: each query's positive's best and worst rank if scores may move by ``tolerance`` against it."""
        return positive_rank_range(query_embeddings @ self.embeddings.T, [self.position[d] for d in positive_ids], tolerance)

    def rankings(self, query_embeddings: np.ndarray, k: int) -> np.ndarray:
        return np.argsort(-(query_embeddings @ self.embeddings.T), axis=1, kind="stable")[:, :k]


class FrozenIndex(RetrievalEnvironment):
    """Documents whose embeddings never change (a query adapter trains against its document model's index): nothing
    is refreshed, so a rank rewarded is a fresh index's by construction."""

    def __init__(self, doc_ids: list[str], embeddings: np.ndarray, seconds: float):
        """``embeddings``: the documents' rows in ``doc_ids`` order; ``seconds``: what computing them took."""
        self.doc_ids, self.doc_texts, self.cursor = doc_ids, [], 0
        self.position = {d: i for i, d in enumerate(doc_ids)}
        self.embeddings = embeddings
        self.initial_refresh = RefreshStats(len(doc_ids), seconds)

    def full_refresh(self) -> RefreshStats:
        return RefreshStats(0, 0.0)

    def refresh_for_batch(self, query_embeddings: np.ndarray, positive_ids: list[str]) -> RefreshStats:
        return RefreshStats(0, 0.0)


def positive_ranks(scores: np.ndarray, positive_rows: list[int] | np.ndarray) -> np.ndarray:
    """1-based rank of each query's positive (``scores[i, positive_rows[i]]``) among all its scores."""
    positive = scores[np.arange(len(positive_rows)), positive_rows]
    return 1 + (scores > positive[:, None]).sum(axis=1)


def positive_rank_range(scores: np.ndarray, positive_rows: list[int] | np.ndarray, tolerance: float) -> np.ndarray:
    """[Q, 2]: the positive's best rank (only documents more than ``tolerance`` above it ahead) and worst rank (every
    document within ``tolerance`` below it ahead too): the ranks the same index could give under encoder noise."""
    positive = scores[np.arange(len(positive_rows)), positive_rows][:, None]
    return np.stack([1 + (scores > positive + tolerance).sum(axis=1), (scores >= positive - tolerance).sum(axis=1)], axis=1)


def overlap_at_k(a: np.ndarray, b: np.ndarray) -> float:
    """Mean share of top-k documents two rankings ([Q, k] row indices) have in common."""
    return float(np.mean([len(set(x) & set(y)) / len(x) for x, y in zip(a, b)]))


def fresh_copy(env: RetrievalEnvironment) -> tuple[RetrievalEnvironment, RefreshStats]:
    """A copy of ``env`` with every document re-encoded by the current policy (``env`` is left as it is)."""
    fresh = copy.copy(env)
    return fresh, fresh.full_refresh()


def rank_agreement(ranks: np.ndarray, fresh_ranks: np.ndarray, fresh_ranges: np.ndarray | None = None) -> dict:
    """How often the positive's rank is the fresh index's, and how close the reciprocal ranks are; with
    ``fresh_ranges`` ([N, 2], from ``positive_rank_range``) also how often it lies within the fresh index's range."""
    ranks, fresh_ranks = np.asarray(ranks), np.asarray(fresh_ranks)
    result = {
        "positive_rank_agreement (same rank)": round(float(np.mean(ranks == fresh_ranks)), 3),
        "reward_agreement (1 - mean |1/r - 1/r_fresh|)": round(float(1 - np.mean(np.abs(1 / ranks - 1 / fresh_ranks))), 4),
    }
    if fresh_ranges is not None:
        inside = (fresh_ranges[:, 0] <= ranks) & (ranks <= fresh_ranges[:, 1])
        result["positive_rank_agreement (within the fresh index's noise range)"] = round(float(np.mean(inside)), 3)
    return result


def agreement_with_fresh_index(env: RetrievalEnvironment, queries: np.ndarray, positive_ids: list[str],
                               noise: float = 0.0) -> dict:
    """Compare ``env``'s maintained index, as it is, with a freshly encoded copy on the positive's rank (also within
    the fresh rank range at +-``noise`` when given) and on the top 10 (the whole index's freshness: no refresh for
    these queries first, unlike a reward)."""
    fresh, full = fresh_copy(env)
    ranges = fresh.rank_ranges(queries, positive_ids, noise) if noise > 0 else None
    return {
        "queries_compared": len(positive_ids),
        "full_refresh_seconds": full.seconds,
        **rank_agreement(env.ranks(queries, positive_ids), fresh.ranks(queries, positive_ids), ranges),
        "top10_overlap_partial_vs_fresh": round(overlap_at_k(env.rankings(queries, 10), fresh.rankings(queries, 10)), 3),
    }
