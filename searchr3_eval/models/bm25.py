"""BM25 baseline (Lucene scoring) with the bm25s library."""
from __future__ import annotations

import time
from typing import Any

import bm25s
import Stemmer

from searchr3_eval.data import RetrievalTask, document_text
from searchr3_eval.metrics import Run


def tokenize(texts: list[str], show_progress: bool = False) -> list[list[str]]:
    """Lowercase, English stopwords removed, Snowball-stemmed tokens (bm25s' standard pipeline)."""
    return bm25s.tokenize(
        texts, stopwords="en", stemmer=Stemmer.Stemmer("english"), return_ids=False, show_progress=show_progress
    )


class BM25Retriever:
    """Lexical retrieval; ``search`` returns the top-k run of every query."""

    def __init__(self, k1: float = 1.5, b: float = 0.75, show_progress: bool = True):
        self.k1, self.b = k1, b
        self.show_progress = show_progress
        self.name = "BM25"
        self.revision = bm25_revision()
        self.search_stats: dict[str, Any] = {}

    @property
    def settings(self) -> dict[str, Any]:
        return bm25_settings(self.k1, self.b)

    def search(self, task: RetrievalTask, top_k: int = 100) -> Run:
        start = time.perf_counter()
        doc_ids = list(task.corpus)
        index = bm25s.BM25(k1=self.k1, b=self.b, method="lucene")
        index.index(tokenize([document_text(task.corpus[d]) for d in doc_ids], self.show_progress), show_progress=self.show_progress)
        query_ids = list(task.queries)
        query_tokens = [tokens or [""] for tokens in tokenize([task.queries[q] for q in query_ids])]
        results, scores = index.retrieve(query_tokens, k=min(top_k, len(doc_ids)), show_progress=self.show_progress)
        run = {
            qid: {doc_ids[i]: float(s) for i, s in zip(row_idx, row_scores) if s > 0}
            for qid, row_idx, row_scores in zip(query_ids, results, scores)
        }
        self.search_stats = {"retrieval_seconds": time.perf_counter() - start, "device": "cpu"}
        return run


def bm25_revision() -> str:
    return f"bm25s-{bm25s.__version__}"


def bm25_settings(k1: float = 1.5, b: float = 0.75) -> dict[str, Any]:
    return {"k1": k1, "b": b, "method": "lucene", "stopwords": "en", "stemmer": "snowball-english"}
