"""The dense-encoder interface shared by every embedding model (BEIR's encode_queries/encode_corpus)."""
from __future__ import annotations

import hashlib
import json
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from tqdm.auto import tqdm

from searchr3_eval.cache import EmbeddingCache, text_hash
from searchr3_eval.data import document_text

Kind = Literal["query", "document"]
PLURAL = {"query": "queries", "document": "documents"}


@dataclass
class EncodeStats:
    """What the last ``encode`` call did: texts embedded by the model, texts served by the cache, seconds."""

    encoded: int = 0
    cached: int = 0
    seconds: float = 0.0
    reasoning: list[str | None] = field(default_factory=list)


class DenseEncoder(ABC):
    """Subclasses implement ``embed``; this class adds batching, length sorting, caching and progress."""

    name: str
    revision: str

    def __init__(self, batch_size: int = 32, cache: EmbeddingCache | None = None, show_progress: bool = True):
        self.batch_size = batch_size
        self.cache = cache
        self.show_progress = show_progress
        self.last_stats = EncodeStats()

    @property
    def settings(self) -> dict:
        """Everything besides the weights that changes the embeddings (part of the cache key)."""
        return {}

    @property
    def cache_key(self) -> str:
        blob = json.dumps([type(self).__name__, self.name, self.revision, self.settings], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:32]

    @abstractmethod
    def embed(self, texts: list[str], kind: Kind) -> tuple[np.ndarray, list[str] | None]:
        """L2-normalised float32 embeddings of one batch, and the reasoning text if the model wrote any."""

    def encode(self, texts: list[str], kind: Kind, batch_size: int | None = None) -> np.ndarray:
        """Embed ``texts``; cached texts are not re-encoded, the rest go longest-first in batches."""
        start = time.perf_counter()
        batch_size = batch_size or self.batch_size
        hashes = [text_hash(t) for t in texts]
        key = f"{self.cache_key}:{kind}"
        cached = self.cache.get(key, list(set(hashes))) if self.cache else {}
        todo = sorted({h: i for i, h in enumerate(hashes) if h not in cached}.values(), key=lambda i: -len(texts[i]))
        fresh: dict[str, tuple[np.ndarray, str | None]] = {}
        batches = range(0, len(todo), batch_size)
        for b in tqdm(batches, desc=f"encode {PLURAL[kind]} ({self.name})", disable=not self.show_progress or not todo):
            idx = todo[b : b + batch_size]
            vectors, reasoning = self.embed([texts[i] for i in idx], kind)
            batch_hashes = [hashes[i] for i in idx]
            if self.cache:
                self.cache.put(key, batch_hashes, vectors, reasoning)
            for j, h in enumerate(batch_hashes):
                fresh[h] = (vectors[j], reasoning[j] if reasoning else None)
        found = {**cached, **fresh}
        self.last_stats = EncodeStats(
            encoded=len(todo),
            cached=len(texts) - len(todo),
            seconds=time.perf_counter() - start,
            reasoning=[found[h][1] for h in hashes],
        )
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([found[h][0] for h in hashes]).astype(np.float32)

    def encode_queries(self, queries: list[str], batch_size: int | None = None, **kwargs) -> np.ndarray:
        return self.encode(queries, "query", batch_size)

    def encode_corpus(self, corpus: list[dict[str, str]] | list[str], batch_size: int | None = None, **kwargs) -> np.ndarray:
        texts = [doc if isinstance(doc, str) else document_text(doc) for doc in corpus]
        return self.encode(texts, "document", batch_size)


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)
