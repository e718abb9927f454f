"""A dense encoder's search of a task: corpus and queries embedded, then the faiss index searched."""
from __future__ import annotations

import tempfile
import time
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from searchr3_eval.data import Kind, RetrievalTask, document_text
from searchr3_eval.distributed import is_main, rank_and_size
from searchr3_eval.metrics import Run
from searchr3_eval.models.encoding import Allocate, EncodeStats
from searchr3_eval.retrieval import IndexSpec, dense_search


class CorpusEncoder(Protocol):
    """What ``search_corpus`` needs of an encoder (``base.DenseEncoder`` has it)."""

    index: IndexSpec
    memmap_dir: Path | None
    show_progress: bool
    device: str
    last_stats: EncodeStats

    def encode(self, texts: list[str], kind: Kind, batch_size: int | None = None,
               allocate: Allocate | None = None) -> np.ndarray: ...


def search_corpus(encoder: CorpusEncoder, task: RetrievalTask, top_k: int) -> tuple[Run, dict[str, Any]]:
    """Embed the corpus and the queries with ``encoder``, then inner-product search (cosine: embeddings are unit
    length) with its index; with its ``memmap_dir`` the corpus embeddings live in a memory-mapped file there. Returns
    the run and what it did (timings, cache use), for the result file. Under ``torchrun`` every rank encodes its
    share and rank 0 searches (the others return an empty run)."""
    doc_ids, query_ids = list(task.corpus), list(task.queries)
    folder = tempfile.TemporaryDirectory(dir=encoder.memmap_dir, prefix="corpus-") if encoder.memmap_dir else nullcontext()
    with folder as tmp:
        allocate = None if tmp is None else partial(memory_mapped, Path(tmp) / "embeddings.npy")
        doc_emb = encoder.encode([document_text(task.corpus[d]) for d in doc_ids], "document", allocate=allocate)
        docs = encoder.last_stats
        query_emb = encoder.encode([task.queries[q] for q in query_ids], "query")
        queries = encoder.last_stats
        if not is_main():
            return {}, {}
        start = time.perf_counter()
        run = dense_search(query_ids, query_emb, doc_ids, doc_emb, top_k=top_k, index=encoder.index,
                           show_progress=encoder.show_progress)
        del doc_emb  # closes the memory-mapped file before its folder goes
    return run, {
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
        "index": encoder.index.name,
        "memory_mapped_corpus": encoder.memmap_dir is not None,
        "device": encoder.device,
        "processes": rank_and_size()[1],
    }


def memory_mapped(path: Path, rows: int, dim: int) -> np.ndarray:
    return np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, dim))
