"""The trainable policy: a causal LM with the embed token (optionally LoRA) and grad-enabled forwards."""
from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from searchr3_eval.models.llm import left_pad, load_causal_lm, position_ids
from searchr3_eval.models.searchr3 import SearchR3Encoder, add_embed_token, embed_token_id


@dataclass
class Forward:
    embeddings: torch.Tensor  # [B, H], L2-normalised hidden state at the last (embed) token
    hidden: torch.Tensor  # [B, T, H] final-layer hidden states
    ids: torch.Tensor  # [B, T] left-padded input ids


class Policy:
    """Holds model, tokenizer, the prompt builder (a ``SearchR3Encoder``) and the frozen reference."""

    def __init__(self, model_path: str, *, lora: bool = False, lora_r: int = 8, lora_alpha: int = 16,
                 max_length: int = 256, max_new_tokens: int = 32, dtype: str = "float32"):
        model, tokenizer, _, _ = load_causal_lm(model_path, dtype)
        if embed_token_id(tokenizer) is None:
            add_embed_token(model, tokenizer)
        self.lora = lora
        if lora:
            from peft import LoraConfig, get_peft_model

            model = get_peft_model(model, LoraConfig(r=lora_r, lora_alpha=lora_alpha, target_modules="all-linear"))
            self.reference = None  # the reference is the model with its adapters disabled
        else:
            self.reference = copy.deepcopy(model).eval().requires_grad_(False)
        self.model, self.tokenizer = model, tokenizer
        self.prompter = SearchR3Encoder(model, tokenizer, max_length=max_length, max_new_tokens=max_new_tokens,
                                        show_progress=False)
        self.embed_id = self.prompter.embed_id

    def _parts(self, model):
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        return base.base_model, base.get_output_embeddings()

    @contextmanager
    def reference_model(self):
        """The frozen reference: the base weights (LoRA disabled) or the frozen copy."""
        if self.lora:
            with self.model.disable_adapter():
                yield self.model
        else:
            yield self.reference

    def forward(self, sequences: list[list[int]], model=None) -> Forward:
        decoder, _ = self._parts(model or self.model)
        ids, mask = left_pad(sequences, self.tokenizer.pad_token_id)
        hidden = decoder(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)).last_hidden_state
        return Forward(F.normalize(hidden[:, -1], dim=-1), hidden, ids)

    def span_logprobs(self, out: Forward, span: torch.Tensor, model=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probabilities [N, V] and targets [N] of the tokens where ``span`` ([B, T] bool) is true."""
        _, head = self._parts(model or self.model)
        target_mask = span[:, 1:]
        logits = head(out.hidden[:, :-1][target_mask])
        return logits.float().log_softmax(-1), out.ids[:, 1:][target_mask]

    def last_tokens_mask(self, sequences: list[list[int]], counts: list[int]) -> torch.Tensor:
        """Mask of the last ``counts[i]`` tokens of each (left-padded) sequence."""
        width = max(len(s) for s in sequences)
        mask = torch.zeros(len(sequences), width, dtype=torch.bool)
        for row, n in enumerate(counts):
            if n:
                mask[row, width - n :] = True
        return mask

    def direct_sequences(self, texts: list[str], kind: str) -> tuple[list[list[int]], list[int]]:
        """Direct-mode sequences and the length of each one's answer (fixed phrase + embed token)."""
        return self.prompter.sequences(texts, kind), [self.prompter.direct_answer_length(kind)] * len(texts)

    @torch.no_grad()
    def encode(self, texts: list[str], kind: str, batch_size: int = 16) -> torch.Tensor:
        self.model.eval()
        out = [self.forward(self.prompter.sequences(texts[i : i + batch_size], kind)).embeddings
               for i in range(0, len(texts), batch_size)]
        return torch.cat(out) if out else torch.zeros(0)

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        model = self.model.merge_and_unload() if self.lora else self.model
        model.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
        if self.lora:  # merging folded the adapters into the weights; keep using the merged model
            self.model = model
