"""Baseline: last-token pooling of an untuned causal LM (text followed by the EOS token)."""
from __future__ import annotations

import numpy as np
import torch

from searchr3_eval.data import Kind
from searchr3_eval.models.base import DenseEncoder, l2_normalize
from searchr3_eval.models.lm.forward import last_hidden_states
from searchr3_eval.models.lm.load import load_causal_lm


class LastTokenEncoder(DenseEncoder):
    def __init__(self, name_or_path: str, dtype: str = "float32", max_length: int = 512, device: str = "cpu", **kwargs):
        self.model, self.tokenizer, self.revision, display = load_causal_lm(name_or_path, dtype, device=device)
        super().__init__(device=str(self.model.device), **kwargs)
        self.name = f"Base LLM last-token ({display})"
        self.max_length = max_length

    @property
    def settings(self) -> dict:
        return {"max_length": self.max_length, "dtype": str(self.model.dtype).removeprefix("torch.")}

    def text_lengths(self, texts: list[str], kind: Kind) -> list[int]:
        return [min(self.max_length, len(ids) + 1) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]

    @torch.inference_mode()
    def embed(self, texts: list[str], kind: Kind) -> tuple[np.ndarray, None]:
        eos = self.tokenizer.eos_token_id
        sequences = [
            self.tokenizer(t, add_special_tokens=False)["input_ids"][: self.max_length - 1] + [eos] for t in texts
        ]
        hidden = last_hidden_states(self.model, sequences, self.tokenizer.pad_token_id)
        return l2_normalize(hidden.float().cpu().numpy()), None
