"""Search-R3 encoder: the last-layer hidden state at ``<|embed_token|>``, L2-normalised.

Direct mode answers with a fixed phrase that ends in the token; reasoning mode lets the model write a
short analysis first (greedy, ``max_new_tokens``; ``lm.generate``) and appends the token if the model did not emit it.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from typing import Literal

import numpy as np
import torch

from searchr3_eval.data import Kind
from searchr3_eval.errors import UserError
from searchr3_eval.models.base import DenseEncoder, l2_normalize
from searchr3_eval.models.lm.device import resolve_device, resolve_dtype
from searchr3_eval.models.lm.forward import last_hidden_states
from searchr3_eval.models.lm.generate import make_generator
from searchr3_eval.models.lm.load import load_causal_lm
from searchr3_eval.models.lm.locate import document_model_of, resolve_llm
from searchr3_eval.models.lm.prompt_format import (
    CASE_FOLDS, DEFAULT_PRESET, PROMPT_PRESETS, PromptFormat, Prompts, add_embed_token, embed_token_id, fold_case,
    resolve_prompts, trained_case_fold, trained_preset,
)
from searchr3_eval.models.options import REASONING_CHOICES

Reasoning = Literal["off", "on", "all"]  # on: queries reason, documents direct; all: both reason
ANALYSIS_END = "stop at the embed token, end of turn or the direct phrase"  # how generation ends (cache key)
REASONING_ONLY = ("max_new_tokens", "backend", "analysis_end", "reasoning_samples", "reasoning_temperature",
                  "reasoning_direct_weight")
SAMPLING_SEED = 0  # each batch's sampled analyses are drawn from this seed


@dataclass(frozen=True)
class SearchR3Settings:
    """Everything besides the weights that changes a Search-R3 embedding: what the encoder is built from, and (as
    ``identity``) the settings its results are known by. ``dtype`` is resolved (float32 or bfloat16)."""

    reasoning: Reasoning = "off"
    max_length: int = 512
    max_new_tokens: int = 64
    prompts: Prompts = PROMPT_PRESETS[DEFAULT_PRESET]
    dtype: str = "float32"
    backend: str = "transformers"
    add_embed_token: bool = False
    reasoning_samples: int = 1
    reasoning_temperature: float = 0.8
    reasoning_direct_weight: float = 0.0  # the direct embedding's share of a reasoning embedding
    case_fold: str = "off"  # prompt_format.fold_case, applied to every text before it is embedded or looked up

    def __post_init__(self) -> None:
        if self.reasoning not in REASONING_CHOICES:
            raise UserError(f"--reasoning must be off, on or all, not {self.reasoning!r}")
        if self.case_fold not in CASE_FOLDS:
            raise UserError(f"--case-fold must be one of {', '.join(CASE_FOLDS)}, not {self.case_fold!r}")

    @classmethod
    def for_model(cls, name_or_path: str, *, prompts: Prompts | None = None, preset: str | None = None,
                  system_prompt: str | None = None, query_prompt: str | None = None,
                  document_prompt: str | None = None, case_fold: str | None = None, dtype: str = "float32",
                  device: str = "cpu", **settings) -> "SearchR3Settings":
        """The settings ``name_or_path`` is loaded with: the prompts are ``prompts`` where given, else ``preset``
        (default: the one the model was trained with, ``trained_preset``) with the given overrides, the case folding
        defaults to the one it declares (``trained_case_fold``), the dtype is resolved for the device; ``settings``:
        the other fields."""
        if prompts is None:
            prompts = resolve_prompts(preset or trained_preset(name_or_path), system_prompt, query_prompt,
                                      document_prompt)
        return cls(prompts=prompts, case_fold=case_fold or trained_case_fold(name_or_path),
                   dtype=resolve_dtype(dtype, resolve_device(device)), **settings)

    def identity(self) -> dict:
        """The settings a result records, and nothing else: those of generation (``REASONING_ONLY`` and the reasoning
        system prompt) only where something reasons, and the sampling settings only where several analyses are
        sampled (one greedy analysis is what every earlier result used), the direct embedding's share only where
        it has one, and the case folding only where there is one."""
        settings = {"reasoning": self.reasoning, "max_length": self.max_length, "prompts": asdict(self.prompts),
                    "dtype": self.dtype, "add_embed_token": self.add_embed_token}
        if self.reasoning == "off":
            del settings["prompts"]["reasoning_system"]
        else:
            settings.update(max_new_tokens=self.max_new_tokens, backend=self.backend, analysis_end=ANALYSIS_END)
            if self.reasoning_samples > 1:
                settings.update(reasoning_samples=self.reasoning_samples,
                                reasoning_temperature=self.reasoning_temperature)
            if self.reasoning_direct_weight > 0:
                settings.update(reasoning_direct_weight=self.reasoning_direct_weight)
        if self.case_fold != "off":
            settings.update(case_fold=self.case_fold)
        return settings


def direct_settings(settings: dict) -> dict:
    """``settings`` as they are with reasoning off (also how a result written before generation settings were
    left out of direct-mode identities is read)."""
    direct = {k: v for k, v in settings.items() if k not in REASONING_ONLY}
    direct["reasoning"] = "off"
    direct["prompts"] = {k: v for k, v in settings["prompts"].items() if k != "reasoning_system"}
    return direct


class SearchR3Encoder(DenseEncoder):
    def __init__(self, model, tokenizer, config: SearchR3Settings = SearchR3Settings(), *, name: str = "Search-R3",
                 revision: str = "unknown", documents: "SearchR3Encoder | None" = None, **kwargs):
        """``documents``: the encoder of the document model when ``model`` is a query adapter's (queries only)."""
        super().__init__(**kwargs)
        if documents is not None and config.reasoning == "all":
            raise UserError(f"{name}: a query adapter reasons on queries only; documents are its document model's "
                            "direct embeddings (use --reasoning on)")
        self.config, self.documents = config, documents
        self.format = PromptFormat(tokenizer, config.prompts, config.max_length, config.max_new_tokens, name)
        self.model, self.tokenizer, self.embed_id = model, tokenizer, self.format.embed_id
        self.name, self.revision = name, revision
        self.share_prefix = True  # run the prompt prefix every text shares once per batch (same embeddings)
        self.generator = make_generator(config.backend, model, tokenizer, self.embed_id,
                                        config.max_length + config.max_new_tokens, config.prompts.direct_answer)

    @classmethod
    def from_pretrained(cls, name_or_path: str, dtype: str = "float32", add_token: bool = False,
                        attn_implementation: str | None = None, device: str = "cpu", prompts: Prompts | None = None,
                        reasoning: Reasoning = "off", max_length: int = 512, max_new_tokens: int = 64,
                        backend: str = "transformers", reasoning_samples: int = 1, reasoning_temperature: float = 0.8,
                        reasoning_direct_weight: float = 0.0, case_fold: str | None = None,
                        **kwargs) -> "SearchR3Encoder":
        """Load a model; ``prompts`` default to the preset it was trained with (``trained_preset``), ``case_fold`` to
        the one it declares (``trained_case_fold``); ``kwargs`` go to ``DenseEncoder``."""
        config = SearchR3Settings.for_model(
            name_or_path, prompts=prompts, case_fold=case_fold, dtype=dtype, device=device, reasoning=reasoning,
            max_length=max_length, max_new_tokens=max_new_tokens, backend=backend, add_embed_token=add_token,
            reasoning_samples=reasoning_samples, reasoning_temperature=reasoning_temperature,
            reasoning_direct_weight=reasoning_direct_weight)
        return cls.from_settings(name_or_path, config, attn_implementation, device, **kwargs)

    @classmethod
    def from_settings(cls, name_or_path: str, config: SearchR3Settings, attn_implementation: str | None = None,
                      device: str = "cpu", **kwargs) -> "SearchR3Encoder":
        """Load a model for ``config`` (what ``describe`` gives its identity from). A query adapter
        (``locate.document_model_of``) embeds queries and its document model, loaded beside it, the documents."""
        model, tokenizer, revision, display = load_causal_lm(name_or_path, config.dtype, attn_implementation, device)
        if embed_token_id(tokenizer) is None and config.add_embed_token:
            add_embed_token(model, tokenizer)
            display += ", untrained embed token"
        documents = None
        if (document_model := document_model_of(resolve_llm(name_or_path)[0])) is not None:
            direct = replace(config, reasoning="off", backend="transformers", add_embed_token=False)  # never generates
            documents = cls.from_settings(document_model, direct, attn_implementation, device, **kwargs)
        return cls(model, tokenizer, config, name=f"Search-R3 ({display})", revision=revision,
                   device=str(model.device), documents=documents, **kwargs)

    def cache_key(self, kind: Kind) -> str:
        if kind == "document" and self.documents is not None:
            return self.documents.cache_key(kind)
        return super().cache_key(kind)

    def encode(self, texts: list[str], kind: Kind, batch_size: int | None = None, allocate=None) -> np.ndarray:
        """Texts are case-folded (``fold_case``) before the cache sees them, so a folded text shares the embedding of
        the text it becomes. A query adapter's documents are its document model's embeddings (the same cache
        entries; that encoder, with the same settings, folds them)."""
        if kind == "document" and self.documents is not None:
            vectors = self.documents.encode(texts, kind, batch_size, allocate)
            self.last_stats = self.documents.last_stats
            return vectors
        return super().encode([fold_case(t, self.config.case_fold) for t in texts], kind, batch_size, allocate)

    @property
    def prompts(self) -> Prompts:
        return self.format.prompts

    @property
    def max_length(self) -> int:
        return self.format.max_length

    @property
    def max_new_tokens(self) -> int:
        return self.format.max_new_tokens

    @property
    def settings(self) -> dict:
        return self.config.identity()

    def embedding_settings(self, kind: Kind) -> dict:
        """A kind embedded directly does not depend on the reasoning settings: with ``--reasoning on`` the documents
        share their cached embeddings with ``--reasoning off``. The case folding is not one of them: the cache is
        keyed by the folded text."""
        settings = self.settings if self.reasons(kind) else direct_settings(self.settings)
        return {k: v for k, v in settings.items() if k != "case_fold"}

    def reasons(self, kind: Kind) -> bool:
        return self.config.reasoning == "all" or (self.config.reasoning == "on" and kind == "query")

    def text_lengths(self, texts: list[str], kind: Kind) -> list[int]:
        """Tokens of each text's full sequence (reasoning mode: the prompt plus the longest analysis, times the
        analyses sampled, which all run in the text's batch)."""
        reasoning = self.reasons(kind)
        extra = self.format.overhead(kind, reasoning) + (self.max_new_tokens if reasoning else 0)
        counts = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        copies = self.config.reasoning_samples if reasoning else 1
        return [copies * min(self.max_length, len(ids) + extra) for ids in counts]

    @torch.inference_mode()
    def embed(self, texts: list[str], kind: Kind) -> tuple[np.ndarray, list[str] | None]:
        """Direct: one embedding a text. Reasoning: after a greedy analysis, or the normalised mean of the embeddings
        after ``samples`` analyses sampled at ``temperature`` (as HyDE averages several generated documents), mixed
        with the direct embedding by ``reasoning_direct_weight`` (``mix_direct``); the cache keeps the analyses (a
        JSON list when several)."""
        if not self.reasons(kind):
            return self.embed_direct(texts, kind), None
        start = time.perf_counter()
        prompts = self.format.generation_prompts(texts, kind)
        samples = self.config.reasoning_samples
        if samples == 1:
            sampled = [[a] for a in self.generator(prompts, self.max_new_tokens)]
        else:
            sampled = self.generator.sample(prompts, self.max_new_tokens, samples, self.config.reasoning_temperature,
                                            SAMPLING_SEED)
        self.generation_seconds += time.perf_counter() - start
        flat_texts = [t for t, row in zip(texts, sampled) for _ in row]
        hidden = last_hidden_states(self.model, self.format.sequences(flat_texts, kind, [a for row in sampled for a in row]),
                                    self.tokenizer.pad_token_id, self.share_prefix)
        vectors = l2_normalize(hidden.float().cpu().numpy()).reshape(len(texts), samples, -1).mean(axis=1)
        analyses = [row[0] if samples == 1 else json.dumps(row) for row in sampled]
        weight = self.config.reasoning_direct_weight
        if weight > 0:
            return mix_direct(vectors, self.embed_direct(texts, kind), weight), analyses
        return l2_normalize(vectors), analyses

    def embed_direct(self, texts: list[str], kind: Kind) -> np.ndarray:
        hidden = last_hidden_states(self.model, self.format.sequences(texts, kind), self.tokenizer.pad_token_id,
                                    self.share_prefix)
        return l2_normalize(hidden.float().cpu().numpy())


def mix_direct(reasoned: np.ndarray, direct: np.ndarray, weight: float) -> np.ndarray:
    """``(1 - weight) * reasoned + weight * direct`` of unit rows, normalised: the reasoning embedding with the direct
    one's share (HyDE's query vector is the mean of the query's own embedding and the generated documents')."""
    return l2_normalize((1 - weight) * l2_normalize(reasoned) + weight * direct)
