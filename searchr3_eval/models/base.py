"""The retriever interface (``search(task, top_k)``, after mteb's SearchProtocol) and the dense encoder base class
that implements it for every embedding model (with BEIR's encode_queries/encode_corpus)."""
from __future__ import annotations

import hashlib
import json
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from tqdm.auto import tqdm

from searchr3_eval.cache import EmbeddingCache, text_hash
from searchr3_eval.data import Kind, RetrievalTask, document_text
from searchr3_eval.distributed import broadcast_from_main, gather_to_main, is_main, rank_and_size
from searchr3_eval.errors import UserError
from searchr3_eval.metrics import Run
from searchr3_eval.retrieval import dense_search, parse_index

PLURAL = {"query": "queries", "document": "documents"}
CACHE_CHUNK = 8192  # hashes looked up in the cache at a time
Allocate = Callable[[int, int], np.ndarray]  # (rows, dim) -> the array embeddings are written into


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
                 batch_tokens: int = 4096, device: str = "cpu", index: str = "flat", memmap_dir: Path | None = None):
        self.batch_size, self.batch_tokens, self.device = batch_size, batch_tokens, device
        self.index, self.memmap_dir = parse_index(index), memmap_dir
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

    def encode(self, texts: list[str], kind: Kind, batch_size: int | None = None,
               allocate: Allocate | None = None) -> np.ndarray:
        """Embed ``texts`` into the array ``allocate(rows, dim)`` returns (default: in RAM; a memory-mapped file
        holds a corpus larger than RAM). Cached texts are not re-encoded; the rest go longest-first in batches of
        at most ``batch_size`` texts and ``batch_tokens`` padded tokens. Under ``torchrun`` each rank embeds every
        world-size-th batch and rank 0 gathers them (the other ranks return an empty array)."""
        start, generation_start = time.perf_counter(), self.generation_seconds
        hashes = [text_hash(t) for t in texts]
        rows_of: dict[str, list[int]] = {}
        for i, h in enumerate(hashes):
            rows_of.setdefault(h, []).append(i)
        key, (rank, size) = self.cache_key(kind), rank_and_size()
        out: np.ndarray | None = None
        reasoning: list[str | None] = [None] * len(texts)

        def store(batch_hashes: list[str], vectors: np.ndarray, why: list[str | None] | None, put: bool) -> None:
            nonlocal out
            if out is None:
                out = (allocate or _in_memory)(len(texts), vectors.shape[1])
            if put and self.cache:
                self.cache.put(key, batch_hashes, vectors, why)
            for j, h in enumerate(batch_hashes):
                out[rows_of[h]] = vectors[j]
                for i in rows_of[h]:
                    reasoning[i] = why[j] if why else None

        unique, cached = list(rows_of), set()
        for chunk_start in range(0, len(unique) if self.cache else 0, CACHE_CHUNK):
            found = self.cache.get(key, unique[chunk_start : chunk_start + CACHE_CHUNK])
            if found:
                store(list(found), np.stack([v for v, _ in found.values()]), [r for _, r in found.values()], put=False)
                cached.update(found)
        todo: list[str] = broadcast_from_main([h for h in unique if h not in cached])
        lengths = self.text_lengths([texts[rows_of[h][0]] for h in todo], kind) if todo else []
        batches = plan_batches(lengths, batch_size or self.batch_size, self.batch_tokens)
        mine, done = batches[rank::size], []
        with tqdm(total=sum(map(len, mine)), desc=f"encode {PLURAL[kind]} ({self.name})",
                  disable=not self.show_progress or not mine) as bar:
            for batch in mine:
                batch_hashes = [todo[j] for j in batch]
                vectors, why = self.embed([texts[rows_of[h][0]] for h in batch_hashes], kind)
                if not np.isfinite(vectors).all():  # never scored, never cached: a NaN model would score 0 silently
                    broken = int((~np.isfinite(vectors).all(axis=1)).sum())
                    raise UserError(f"{self.name} gave non-finite embeddings (NaN or inf) for {broken} of {len(batch)} "
                                    f"{PLURAL[kind]} in a batch: its weights or settings are broken")
                if size == 1:  # stored as it goes, so an interrupted run keeps what it encoded
                    store(batch_hashes, vectors, why, put=True)
                else:
                    done.append((batch_hashes, vectors, why))
                bar.update(len(batch))
        if size > 1:
            for part in gather_to_main(done):
                for batch_hashes, vectors, why in part:
                    store(batch_hashes, vectors, why, put=True)
        self.last_stats = EncodeStats(
            encoded=len(todo),
            cached=len(texts) - sum(len(rows_of[h]) for h in todo),
            seconds=time.perf_counter() - start,
            reasoning=reasoning,
            tokens=sum(lengths),
            padded_tokens=sum(len(b) * max(lengths[j] for j in b) for b in batches),
            generation_seconds=self.generation_seconds - generation_start,
        )
        return out if out is not None else np.zeros((0, 0), dtype=np.float32)

    def search(self, task: RetrievalTask, top_k: int) -> Run:
        """Embed the corpus and the queries, then inner-product search (cosine: embeddings are unit length) with
        the encoder's index; with ``memmap_dir`` the corpus embeddings live in a memory-mapped file there.
        Under ``torchrun`` every rank encodes its share and rank 0 searches (the others return an empty run)."""
        doc_ids, query_ids = list(task.corpus), list(task.queries)
        with tempfile.TemporaryDirectory(dir=self.memmap_dir, prefix="corpus-") if self.memmap_dir else nullcontext() as tmp:
            allocate = None if tmp is None else partial(_memory_mapped, Path(tmp) / "embeddings.npy")
            doc_emb = self.encode([document_text(task.corpus[d]) for d in doc_ids], "document", allocate=allocate)
            docs = self.last_stats
            query_emb = self.encode([task.queries[q] for q in query_ids], "query")
            queries = self.last_stats
            if not is_main():
                self.search_stats = {}
                return {}
            start = time.perf_counter()
            run = dense_search(query_ids, query_emb, doc_ids, doc_emb, top_k=top_k, index=self.index,
                               show_progress=self.show_progress)
            del doc_emb  # closes the memory-mapped file before its folder goes
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
            "embedding_dim": int(query_emb.shape[1]),
            "index": self.index.name,
            "memory_mapped_corpus": self.memmap_dir is not None,
            "device": self.device,
            "processes": rank_and_size()[1],
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


def _in_memory(rows: int, dim: int) -> np.ndarray:
    return np.empty((rows, dim), dtype=np.float32)


def _memory_mapped(path: Path, rows: int, dim: int) -> np.ndarray:
    return np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, dim))


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)
