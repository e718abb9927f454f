"""The retriever interface (``search(task, top_k)``, after mteb's SearchProtocol) and the dense encoder base class
that implements it for every embedding model from parts: ``encoding`` (cache, batches, processes), ``corpus_search``
(corpus and queries embedded, faiss searched) and ``beir_methods`` (BEIR's encode_queries/encode_corpus)."""
from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from searchr3_eval.cache import EmbeddingCache
from searchr3_eval.data import Kind, RetrievalTask
from searchr3_eval.metrics import Run
from searchr3_eval.models.beir_methods import BEIRMethods
from searchr3_eval.models.corpus_search import search_corpus
from searchr3_eval.models.encoding import (
    Allocate, Batching, EncodeStats, auto_batch_tokens, encode_texts, transformer_bytes_per_token,
)
from searchr3_eval.retrieval import parse_index


@runtime_checkable
class Retriever(Protocol):
    """Anything that ranks a task's corpus for its queries: BM25 and every dense encoder."""

    name: str
    revision: str
    search_stats: dict[str, Any]  # what the last ``search`` did (timings, cache use), for the result file

    @property
    def settings(self) -> dict[str, Any]: ...

    def search(self, task: RetrievalTask, top_k: int) -> Run: ...


class DenseEncoder(BEIRMethods, ABC):
    """Subclasses implement ``embed`` (and count ``text_lengths``); encoding many texts (``encoding``), searching a
    task (``corpus_search``) and BEIR's interface (``beir_methods``) are parts this class composes."""

    name: str
    revision: str

    def __init__(self, batch_size: int = 256, cache: EmbeddingCache | None = None, show_progress: bool = True,
                 batch_tokens: int | str = "auto", device: str = "cpu", index: str = "flat",
                 memmap_dir: Path | None = None):
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

    @cached_property
    def token_budget(self) -> int:
        """Padded tokens a batch may hold: ``batch_tokens``, or for ``auto`` sized for the device
        (``encoding.auto_batch_tokens``) from ``bytes_per_token``."""
        if self.batch_tokens != "auto":
            return int(self.batch_tokens)
        return auto_batch_tokens(self.device, self.bytes_per_token())

    def bytes_per_token(self) -> int:
        """Memory one token of a batch takes on the device (0: unknown, the CPU budget is used)."""
        model = getattr(self, "model", None)
        config = getattr(model, "config", None)
        dtype = getattr(model, "dtype", None)
        return transformer_bytes_per_token(config, dtype.itemsize) if config is not None and dtype is not None else 0

    def encode(self, texts: list[str], kind: Kind, batch_size: int | None = None,
               allocate: Allocate | None = None) -> np.ndarray:
        """Embed ``texts`` (``encoding.encode_texts``: cached texts are not re-encoded, the rest go longest first in
        batches of at most ``batch_size`` texts and ``batch_tokens`` padded tokens); ``last_stats`` says what it did."""
        batching = Batching(batch_size or self.batch_size, self.token_budget)
        vectors, self.last_stats = encode_texts(self, texts, kind, batching, self.cache, self.show_progress, allocate)
        return vectors

    def search(self, task: RetrievalTask, top_k: int) -> Run:
        """``corpus_search.search_corpus``; ``search_stats`` says what it did."""
        run, self.search_stats = search_corpus(self, task, top_k)
        return run


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)
