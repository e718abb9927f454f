"""Adapter from a ``DenseEncoder`` to mteb's encoder protocol (v2 DataLoader inputs and v1 lists).

``mteb.evaluate(MTEBEncoder(encoder), tasks)``: queries and documents use their own prompts, and the model meta's
name and revision carry the encoder's revision and settings, because mteb keys its result cache on them.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from searchr3_eval.models.base import DenseEncoder
from searchr3_eval.results import identity_key, slug


class MTEBEncoder:
    def __init__(self, encoder: DenseEncoder):
        self.encoder = encoder

    @property
    def mteb_model_meta(self):
        from mteb.models.model_meta import ModelMeta, ScoringFunction

        enc = self.encoder
        settings = identity_key({"revision": enc.revision, "settings": enc.settings})
        return ModelMeta.create_empty(overwrites={
            "name": f"searchr3-eval/{slug(enc.name)}",
            "revision": f"{slug(enc.revision)}-{settings}",
            "similarity_fn_name": ScoringFunction.COSINE,
            "framework": ["PyTorch"],
            "experiment_kwargs": {"settings": settings},
        })

    def encode(self, inputs: Any, *, task_metadata: Any = None, hf_split: str | None = None,
               hf_subset: str | None = None, prompt_type: Any = None, **kwargs) -> np.ndarray:
        texts: list[str] = []
        for item in inputs:  # a list of strings (mteb v1) or a DataLoader of {"text": [...]} batches (v2)
            texts.extend(item["text"] if isinstance(item, dict) else [item])
        kind = "query" if getattr(prompt_type, "value", prompt_type) == "query" else "document"
        shown = self.encoder.show_progress
        if "show_progress_bar" in kwargs:
            self.encoder.show_progress = bool(kwargs["show_progress_bar"])
        try:
            return self.encoder.encode([str(t) for t in texts], kind, kwargs.get("batch_size"))
        finally:
            self.encoder.show_progress = shown

    def similarity(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.asarray(a) @ np.asarray(b).T

    def similarity_pairwise(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (np.asarray(a) * np.asarray(b)).sum(axis=1)
