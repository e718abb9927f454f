"""Adapter from a ``DenseEncoder`` to mteb's encoder protocol (v2 DataLoader inputs and v1 lists)."""
from __future__ import annotations

from typing import Any

import numpy as np

from searchr3_eval.models.base import DenseEncoder


class MTEBEncoder:
    """``mteb.evaluate(MTEBEncoder(encoder), tasks)``: queries and passages use their own prompts."""

    def __init__(self, encoder: DenseEncoder):
        self.encoder = encoder

    def encode(self, inputs: Any, *, task_metadata: Any = None, hf_split: str | None = None,
               hf_subset: str | None = None, prompt_type: Any = None, **kwargs) -> np.ndarray:
        texts: list[str] = []
        for item in inputs:  # a list of strings (mteb v1) or a DataLoader of {"text": [...]} batches (v2)
            texts.extend(item["text"] if isinstance(item, dict) else [item])
        kind = "query" if getattr(prompt_type, "value", prompt_type) == "query" else "document"
        return self.encoder.encode([str(t) for t in texts], kind)

    def similarity(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.asarray(a) @ np.asarray(b).T

    def similarity_pairwise(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (np.asarray(a) * np.asarray(b)).sum(axis=1)
