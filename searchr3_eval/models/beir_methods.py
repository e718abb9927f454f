"""BEIR's encoder interface (``encode_queries``, ``encode_corpus``) over a dense encoder's ``encode``."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from searchr3_eval.data import document_text


class BEIRMethods:
    """What BEIR's ``DenseRetrievalExactSearch`` calls, mixed into a class with ``encode(texts, kind, batch_size)``
    (``base.DenseEncoder``)."""

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
        return torch.from_numpy(vectors)
    return vectors
