"""BM25 baseline (Lucene scoring) with the bm25s library."""
from __future__ import annotations

import time
from typing import Any

import bm25s
import numpy as np
import Stemmer

from searchr3_eval.data import RetrievalTask, document_text
from searchr3_eval.errors import UserError
from searchr3_eval.metrics import Run


def tokenize(texts: list[str], show_progress: bool = False) -> list[list[str]]:
    """Lowercase, English stopwords removed, Snowball-stemmed tokens (bm25s' standard pipeline)."""
    return bm25s.tokenize(
        texts, stopwords="en", stemmer=Stemmer.Stemmer("english"), return_ids=False, show_progress=show_progress
    )


def bm25_index(doc_texts: list[str], k1: float = 1.5, b: float = 0.75, show_progress: bool = False,
               where: str = "BM25") -> bm25s.BM25:
    """A Lucene-scored BM25 index of ``doc_texts`` (one row per text, in order), tokenised as ``tokenize`` does."""
    doc_tokens = tokenize(doc_texts, show_progress)
    if not any(doc_tokens):
        raise UserError(f"{where}: no document has a word BM25 can index (every document is blank or only stopwords)")
    index = bm25s.BM25(k1=k1, b=b, method="lucene")
    index.index(doc_tokens, show_progress=show_progress)
    return index


def known_tokens(index: bm25s.BM25, queries: list[str]) -> list[list[str]]:
    """Each query's tokens that ``index`` has (none: the query scores 0 against every document)."""
    return [[t for t in tokens if t in index.vocab_dict] for tokens in tokenize([q or "" for q in queries])]


def bm25_scores(index: bm25s.BM25, queries: list[str]) -> np.ndarray:
    """[Q, N] BM25 score of every query against every document of ``index``, as ``BM25Retriever`` ranks them."""
    scores = np.zeros((len(queries), index.scores["num_docs"]), dtype=np.float32)
    for row, tokens in enumerate(known_tokens(index, queries)):
        if tokens:
            scores[row] = index.get_scores(tokens)
    return scores


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
        index = bm25_index([document_text(task.corpus[d]) for d in doc_ids], self.k1, self.b, self.show_progress,
                           task.name)
        # a query scores 0 against every document when none of its words is in the index (blank, only stopwords, or
        # words no document has), as a dense model's query with no match does
        run: Run = {qid: {} for qid in task.queries}
        known = [(qid, tokens) for qid, tokens in zip(task.queries, known_tokens(index, list(task.queries.values())))
                 if tokens]
        if known:
            results, scores = index.retrieve([tokens for _, tokens in known], k=min(top_k, len(doc_ids)),
                                             show_progress=self.show_progress)
            for (qid, _), row_idx, row_scores in zip(known, results, scores):
                run[qid] = {doc_ids[i]: float(s) for i, s in zip(row_idx, row_scores) if s > 0}
        self.search_stats = {"retrieval_seconds": time.perf_counter() - start, "device": "cpu"}
        return run


def bm25_revision() -> str:
    return f"bm25s-{bm25s.__version__}"


def bm25_settings(k1: float = 1.5, b: float = 0.75) -> dict[str, Any]:
    return {"k1": k1, "b": b, "method": "lucene", "stopwords": "en", "stemmer": "snowball-english"}
