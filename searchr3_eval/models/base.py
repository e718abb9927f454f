"""The retriever interface (``search(task, top_k)``, after mteb's SearchProtocol) and the dense encoder base class
that implements it for every embedding model (with BEIR's encode_queries/encode_corpus)."""
from __future__ import annotations

import hashlib
import json
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
from tqdm.auto import tqdm

from searchr3_eval.cache import EmbeddingCache, text_hash
from searchr3_eval.data import RetrievalTask, document_text
from searchr3_eval.metrics import Run
from searchr3_eval.retrieval import dense_search

Kind = Literal["query", "document"]
PLURAL = {"query": "queries", "document": "documents"}


@dataclass
class EncodeStats:
    """What the last ``encode`` call did: texts embedded by the model, texts served by the cache, seconds."""

    encoded: int = 0
    cached: int = 0
    seconds: float = 0.0
    reasoning: list[str | None] = field(default_factory=list)
    tokens: int = 0  # tokens of the encoded texts (in the unit ``text_lengths`` counts)
    padded_tokens: int = 0  # tokens the batches held, padding included
    generation_seconds: float = 0.0  # of ``seconds``, spent writing reasoning

    @property
    def padding_waste(self) -> float:
        return 1 - self.tokens / self.padded_tokens if self.padded_tokens else 0.0


def plan_batches(lengths: list[int], max_rows: int, max_tokens: int) -> list[list[int]]:
    """Indices grouped into batches, longest first, each holding at most ``max_rows`` texts and at most
    ``max_tokens`` tokens once padded to its longest text (a text longer than the budget goes alone)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches, start = [], 0
    while start < len(order):
        rows = max(1, min(max_rows, max_tokens // max(1, lengths[order[start]])))
        batches.append(order[start : start + rows])
        start += rows
    return batches


@runtime_checkable
class Retriever(Protocol):
    """Anything that ranks a task's corpus for its queries: BM25 and every dense encoder."""

    name: str
    revision: str
    search_stats: dict[str, Any]  # what the last ``search`` did (timings, cache use), for the result file

    @property
    def settings(self) -> dict[str, Any]: ...

    def search(self, task: RetrievalTask, top_k: int) -> Run: ...


class DenseEncoder(ABC):
    """Subclasses implement ``embed``; this class adds batching, length sorting, caching, progress and search."""

    name: str
    revision: str

    def __init__(self, batch_size: int = 256, cache: EmbeddingCache | None = None, show_progress: bool = True,
                 batch_tokens: int = 4096, device: str = "cpu"):
        self.batch_size, self.batch_tokens, self.device = batch_size, batch_tokens, device
        self.generation_seconds = 0.0  # encoders that write reasoning add their generation time here
        self.cache = cache
        self.show_progress = show_progress
        self.last_stats = EncodeStats()
        self.search_stats: dict[str, Any] = {}

    @property
    def settings(self) -> dict:
        """Everything besides the weights that changes the embeddings (part of the cache key)."""
        return {}

    def embedding_settings(self, kind: Kind) -> dict:
        """The settings that change embeddings of ``kind`` (by default all of them)."""
        return self.settings

    def cache_key(self, kind: Kind) -> str:
        blob = json.dumps([type(self).__name__, self.name, self.revision, self.embedding_settings(kind)], sort_keys=True)
        return f"{hashlib.sha256(blob.encode()).hexdigest()[:32]}:{kind}"

    @abstractmethod
    def embed(self, texts: list[str], kind: Kind) -> tuple[np.ndarray, list[str] | None]:
        """L2-normalised float32 embeddings of one batch, and the reasoning text if the model wrote any."""

    def text_lengths(self, texts: list[str], kind: Kind) -> list[int]:
        """Each text's length in tokens of this model (batches are planned with it); subclasses count exactly."""
        return [max(1, len(t) // 4) for t in texts]

    def encode(self, texts: list[str], kind: Kind, batch_size: int | None = None) -> np.ndarray:
        """Embed ``texts``; cached texts are not re-encoded, the rest go longest-first in batches of at most
        ``batch_size`` texts and ``batch_tokens`` padded tokens."""
        start, generation_start = time.perf_counter(), self.generation_seconds
        hashes = [text_hash(t) for t in texts]
        key = self.cache_key(kind)
        cached = self.cache.get(key, list(set(hashes))) if self.cache else {}
        todo = list({h: i for i, h in enumerate(hashes) if h not in cached}.values())
        lengths = self.text_lengths([texts[i] for i in todo], kind) if todo else []
        batches = plan_batches(lengths, batch_size or self.batch_size, self.batch_tokens)
        fresh: dict[str, tuple[np.ndarray, str | None]] = {}
        padded = 0
        with tqdm(total=len(todo), desc=f"encode {PLURAL[kind]} ({self.name})", disable=not self.show_progress or not todo) as bar:
            for batch in batches:
                padded += len(batch) * max(lengths[j] for j in batch)
                idx = [todo[j] for j in batch]
                vectors, reasoning = self.embed([texts[i] for i in idx], kind)
                batch_hashes = [hashes[i] for i in idx]
                if self.cache:
                    self.cache.put(key, batch_hashes, vectors, reasoning)
                for j, h in enumerate(batch_hashes):
                    fresh[h] = (vectors[j], reasoning[j] if reasoning else None)
                bar.update(len(batch))
        found = {**cached, **fresh}
        self.last_stats = EncodeStats(
            encoded=len(todo),
            cached=len(texts) - len(todo),
            seconds=time.perf_counter() - start,
            reasoning=[found[h][1] for h in hashes],
            tokens=sum(lengths),
            padded_tokens=padded,
            generation_seconds=self.generation_seconds - generation_start,
        )
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([found[h][0] for h in hashes]).astype(np.float32)

    def search(self, task: RetrievalTask, top_k: int) -> Run:
        """Embed the corpus and the queries, then exact inner-product search (cosine: embeddings are unit length)."""
        doc_ids, query_ids = list(task.corpus), list(task.queries)
        doc_emb = self.encode([document_text(task.corpus[d]) for d in doc_ids], "document")
        docs = self.last_stats
        query_emb = self.encode([task.queries[q] for q in query_ids], "query")
        queries = self.last_stats
        start = time.perf_counter()
        run = dense_search(query_ids, query_emb, doc_ids, doc_emb, top_k=top_k, show_progress=self.show_progress)
        self.search_stats = {
            "encode_seconds_corpus": docs.seconds,
            "encode_seconds_queries": queries.seconds,
            "docs_encoded": docs.encoded,
            "docs_from_cache": docs.cached,
            "queries_encoded": queries.encoded,
            "queries_from_cache": queries.cached,
            "docs_per_second": docs.encoded / docs.seconds if docs.encoded else None,
            "queries_per_second": queries.encoded / queries.seconds if queries.encoded else None,
            "doc_tokens_per_second": docs.tokens / docs.seconds if docs.encoded else None,
            "padding_waste_corpus": docs.padding_waste,
            "padding_waste_queries": queries.padding_waste,
            "generation_seconds": docs.generation_seconds + queries.generation_seconds,
            "search_seconds": time.perf_counter() - start,
            "embedding_dim": int(doc_emb.shape[1]),
            "device": self.device,
        }
        return run

    def encode_queries(self, queries: list[str], batch_size: int | None = None, **kwargs) -> Any:
        """BEIR's query encoder; ``convert_to_tensor=True`` (BEIR's default) returns a torch tensor."""
        return _as_requested(self.encode(list(queries), "query", batch_size), kwargs)

    def encode_corpus(self, corpus: list[dict] | list[str] | dict[str, list], batch_size: int | None = None, **kwargs) -> Any:
        """BEIR's corpus encoder: a list of ``{"title", "text"}`` dicts (title optional or None), a dict of columns
        (``{"title": [...], "text": [...]}``, as BEIR's parallel search passes) or plain strings."""
        if isinstance(corpus, dict):
            texts = corpus.get("text", [])
            titles = corpus.get("title") or [None] * len(texts)
            docs: list = [{"title": title, "text": text} for title, text in zip(titles, texts)]
        else:
            docs = list(corpus)
        texts = [doc if isinstance(doc, str) else document_text(
            {"title": doc.get("title") or "", "text": doc.get("text") or ""}) for doc in docs]
        return _as_requested(self.encode(texts, "document", batch_size), kwargs)


def _as_requested(vectors: np.ndarray, kwargs: dict) -> Any:
    if kwargs.get("convert_to_tensor"):
        import torch

        return torch.from_numpy(vectors)
    return vectors


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)
