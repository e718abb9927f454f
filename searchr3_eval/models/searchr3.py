"""Search-R3 encoder: the last-layer hidden state at ``<|embed_token|>``, L2-normalised.

Direct mode answers with a fixed phrase that ends in the token; reasoning mode lets the model write a
short analysis first (greedy, ``max_new_tokens``) and appends the token if the model did not emit it. An analysis ends
at the embed token, at the end of the turn, or once the model has written the direct phrase (the trained answer ends
"<analysis>. The embedding is <|embed_token|>", so only the token may follow it).
"""
from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict
from typing import Literal

import numpy as np
import torch

from searchr3_eval.errors import UserError
from searchr3_eval.models.base import DenseEncoder, Kind, l2_normalize
from searchr3_eval.models.llm import last_hidden_states, left_pad, load_causal_lm, resolve_llm
from searchr3_eval.models.prompt_format import (
    DEFAULT_PRESET, PROMPT_PRESETS, PromptFormat, Prompts, add_embed_token, embed_token_id, resolve_prompts,
    trained_preset,
)

Reasoning = Literal["off", "on", "all"]  # on: queries reason, documents direct; all: both reason


ANALYSIS_END = "stop at the embed token, end of turn or the direct phrase"  # how generation ends (cache key)


def searchr3_settings(reasoning: str, max_length: int, max_new_tokens: int, prompts: Prompts, dtype: str, backend: str,
                      add_embed_token: bool, samples: int = 1, temperature: float = 0.0) -> dict:
    """Everything besides the weights that changes a Search-R3 embedding, and nothing else: the settings of
    generation (``REASONING_ONLY`` and the reasoning system prompt) only where something reasons, and the sampling
    settings only where several analyses are sampled (one greedy analysis is what every earlier result used)."""
    settings = {"reasoning": reasoning, "max_length": max_length, "prompts": asdict(prompts), "dtype": dtype,
                "add_embed_token": add_embed_token}
    if reasoning == "off":
        del settings["prompts"]["reasoning_system"]
    else:
        settings.update(max_new_tokens=max_new_tokens, backend=backend, analysis_end=ANALYSIS_END)
        if samples > 1:
            settings.update(reasoning_samples=samples, reasoning_temperature=temperature)
    return settings


REASONING_ONLY = ("max_new_tokens", "backend", "analysis_end", "reasoning_samples", "reasoning_temperature")
SAMPLING_SEED = 0  # each batch's sampled analyses are drawn from this seed


def direct_settings(settings: dict) -> dict:
    """``settings`` as they are with reasoning off (also how a result written before generation settings were
    left out of direct-mode identities is read)."""
    direct = {k: v for k, v in settings.items() if k not in REASONING_ONLY}
    direct["reasoning"] = "off"
    direct["prompts"] = {k: v for k, v in settings["prompts"].items() if k != "reasoning_system"}
    return direct


class SearchR3Encoder(DenseEncoder):
    def __init__(
        self,
        model,
        tokenizer,
        *,
        name: str = "Search-R3",
        revision: str = "unknown",
        reasoning: Reasoning = "off",
        max_length: int = 512,
        max_new_tokens: int = 64,
        backend: str = "transformers",
        prompts: Prompts = PROMPT_PRESETS[DEFAULT_PRESET],
        add_embed_token: bool = False,
        reasoning_samples: int = 1,
        reasoning_temperature: float = 0.8,
        documents: "SearchR3Encoder | None" = None,
        **kwargs,
    ):
        """``documents``: the encoder of the document model when ``model`` is a query adapter's (queries only)."""
        super().__init__(**kwargs)
        if reasoning not in ("off", "on", "all"):
            raise UserError(f"--reasoning must be off, on or all, not {reasoning!r}")
        if documents is not None and reasoning == "all":
            raise UserError(f"{name}: a query adapter reasons on queries only; documents are its document model's "
                            "direct embeddings (use --reasoning on)")
        self.documents = documents
        self.format = PromptFormat(tokenizer, prompts, max_length, max_new_tokens, name)
        self.model, self.tokenizer, self.embed_id = model, tokenizer, self.format.embed_id
        self.name, self.revision = name, revision
        self.reasoning, self.backend, self.add_embed_token = reasoning, backend, add_embed_token
        self.samples, self.temperature = reasoning_samples, reasoning_temperature
        self.share_prefix = True  # run the prompt prefix every text shares once per batch (same embeddings)
        self.generator = make_generator(backend, model, tokenizer, self.embed_id, max_length + max_new_tokens,
                                        prompts.direct_answer)

    @classmethod
    def from_pretrained(cls, name_or_path: str, dtype: str = "float32", add_token: bool = False,
                        attn_implementation: str | None = None, device: str = "cpu", prompts: Prompts | None = None,
                        **kwargs) -> "SearchR3Encoder":
        """Load a model; ``prompts`` default to the preset it was trained with (``trained_preset``). A query adapter
        (``adapter.document_model_of``) embeds queries and its document model, loaded beside it, the documents."""
        from searchr3_eval.models.adapter import document_model_of

        prompts = prompts or resolve_prompts(trained_preset(name_or_path))
        model, tokenizer, revision, display = load_causal_lm(name_or_path, dtype, attn_implementation, device)
        if embed_token_id(tokenizer) is None and add_token:
            add_embed_token(model, tokenizer)
            display += ", untrained embed token"
        documents = None
        if (document_model := document_model_of(resolve_llm(name_or_path)[0])) is not None:
            direct = {**kwargs, "reasoning": "off", "backend": "transformers"}  # documents never generate
            documents = cls.from_pretrained(document_model, dtype, False, attn_implementation, device, prompts, **direct)
        return cls(model, tokenizer, name=f"Search-R3 ({display})", revision=revision, prompts=prompts,
                   add_embed_token=add_token, device=str(model.device), documents=documents, **kwargs)

    def cache_key(self, kind: Kind) -> str:
        if kind == "document" and self.documents is not None:
            return self.documents.cache_key(kind)
        return super().cache_key(kind)

    def encode(self, texts: list[str], kind: Kind, batch_size: int | None = None, allocate=None) -> np.ndarray:
        """A query adapter's documents are its document model's embeddings (the same cache entries)."""
        if kind == "document" and self.documents is not None:
            vectors = self.documents.encode(texts, kind, batch_size, allocate)
            self.last_stats = self.documents.last_stats
            return vectors
        return super().encode(texts, kind, batch_size, allocate)

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
        dtype = str(self.model.dtype).removeprefix("torch.")
        return searchr3_settings(self.reasoning, self.max_length, self.max_new_tokens, self.prompts, dtype, self.backend,
                                 self.add_embed_token, self.samples, self.temperature)

    def embedding_settings(self, kind: Kind) -> dict:
        """A kind embedded directly does not depend on the reasoning settings: with ``--reasoning on`` the documents
        share their cached embeddings with ``--reasoning off``."""
        return self.settings if self.reasons(kind) else direct_settings(self.settings)

    def reasons(self, kind: Kind) -> bool:
        return self.reasoning == "all" or (self.reasoning == "on" and kind == "query")

    def text_lengths(self, texts: list[str], kind: Kind) -> list[int]:
        """Tokens of each text's full sequence (reasoning mode: the prompt plus the longest analysis, times the
        analyses sampled, which all run in the text's batch)."""
        reasoning = self.reasons(kind)
        extra = self.format.overhead(kind, reasoning) + (self.max_new_tokens if reasoning else 0)
        counts = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        copies = self.samples if reasoning else 1
        return [copies * min(self.max_length, len(ids) + extra) for ids in counts]

    @torch.inference_mode()
    def embed(self, texts: list[str], kind: Kind) -> tuple[np.ndarray, list[str] | None]:
        """Direct: one embedding a text. Reasoning: after a greedy analysis, or the normalised mean of the embeddings
        after ``samples`` analyses sampled at ``temperature`` (as HyDE averages several generated documents); the
        cache keeps the analyses (a JSON list when several)."""
        if not self.reasons(kind):
            hidden = last_hidden_states(self.model, self.format.sequences(texts, kind), self.tokenizer.pad_token_id,
                                        self.share_prefix)
            return l2_normalize(hidden.float().cpu().numpy()), None
        start = time.perf_counter()
        prompts = self.format.generation_prompts(texts, kind)
        if self.samples == 1:
            sampled = [[a] for a in self.generator(prompts, self.max_new_tokens)]
        else:
            sampled = self.generator.sample(prompts, self.max_new_tokens, self.samples, self.temperature, SAMPLING_SEED)
        self.generation_seconds += time.perf_counter() - start
        flat_texts = [t for t, row in zip(texts, sampled) for _ in row]
        hidden = last_hidden_states(self.model, self.format.sequences(flat_texts, kind, [a for row in sampled for a in row]),
                                    self.tokenizer.pad_token_id, self.share_prefix)
        vectors = l2_normalize(hidden.float().cpu().numpy()).reshape(len(texts), self.samples, -1).mean(axis=1)
        analyses = [row[0] if self.samples == 1 else json.dumps(row) for row in sampled]
        return l2_normalize(vectors), analyses


def make_generator(backend: str, model, tokenizer, embed_id: int, max_model_len: int, direct_answer: str):
    """A callable (prompt token ids, max_new_tokens) -> analyses, for the chosen backend."""
    if backend == "transformers":
        return TransformersGenerator(model, tokenizer, embed_id, direct_answer)
    if backend == "vllm":
        return VLLMGenerator(model, tokenizer, embed_id, max_model_len, direct_answer)
    raise UserError(f"unknown generation backend {backend!r}; use transformers or vllm")


def stop_token_ids(tokenizer, embed_id: int) -> list[int]:
    """Tokens that end an analysis: the embed token, end of sequence, end of turn."""
    stops = {embed_id, tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")}
    return sorted(i for i in stops if isinstance(i, int) and i != tokenizer.unk_token_id)


def direct_phrase(direct_answer: str) -> str:
    """The words of the direct answer before the embed token ("The embedding is")."""
    return direct_answer.strip()


def generation_stops(tokenizer, stop_ids: list[int], phrase: str) -> dict:
    """``generate`` keyword arguments that end an analysis: the stop tokens, and the direct phrase as a stop string."""
    return {"eos_token_id": stop_ids, **({"stop_strings": [phrase], "tokenizer": tokenizer} if phrase else {})}


def analysis_length(tokenizer, tokens: list[int], stop_ids: list[int], embed_id: int, phrase: str) -> tuple[int, bool]:
    """Where a generated answer's analysis ends: (its number of tokens, whether the answer ended as trained). It ends
    before the first stop token, or after the tokens that complete ``phrase`` (the direct phrase, which only the embed
    token may follow); "ended as trained" is the embed token or the phrase, not the end of the turn or the length cap."""
    for n, token in enumerate(tokens):
        if token in stop_ids:
            return n, token == embed_id
        if phrase and phrase in tokenizer.decode(tokens[: n + 1], skip_special_tokens=True):
            return n + 1, True
    return len(tokens), False


class TransformersGenerator:
    """Greedy batched generation on a left-padded batch; stops at the embed token, the end of the turn or the direct
    phrase."""

    def __init__(self, model, tokenizer, embed_id: int, direct_answer: str):
        self.model, self.tokenizer, self.embed_id = model, tokenizer, embed_id
        self.stop_ids = stop_token_ids(tokenizer, embed_id)
        self.phrase = direct_phrase(direct_answer)

    @torch.inference_mode()
    def __call__(self, prompts: list[list[int]], max_new_tokens: int) -> list[str]:
        ids, mask = left_pad(prompts, self.tokenizer.pad_token_id)
        out = self.model.generate(
            input_ids=ids.to(self.model.device),
            attention_mask=mask.to(self.model.device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=self.tokenizer.pad_token_id,
            **generation_stops(self.tokenizer, self.stop_ids, self.phrase),
        )
        return self._analyses(out[:, ids.shape[1] :].tolist())

    @torch.inference_mode()
    def sample(self, prompts: list[list[int]], max_new_tokens: int, samples: int, temperature: float,
               seed: int) -> list[list[str]]:
        """``samples`` analyses of each prompt, sampled at ``temperature`` from ``seed``."""
        ids, mask = left_pad(prompts, self.tokenizer.pad_token_id)
        torch.manual_seed(seed)
        out = self.model.generate(
            input_ids=ids.to(self.model.device), attention_mask=mask.to(self.model.device),
            max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature, top_p=1.0, top_k=0,
            num_return_sequences=samples, pad_token_id=self.tokenizer.pad_token_id,
            **generation_stops(self.tokenizer, self.stop_ids, self.phrase),
        )
        analyses = self._analyses(out[:, ids.shape[1] :].tolist())
        return [analyses[i : i + samples] for i in range(0, len(analyses), samples)]

    def _analyses(self, rows: list[list[int]]) -> list[str]:
        analyses = []
        for row in rows:
            cut, _ = analysis_length(self.tokenizer, row, self.stop_ids, self.embed_id, self.phrase)
            analyses.append(self.tokenizer.decode(row[:cut], skip_special_tokens=True).strip())
        return analyses


VLLM_GPU_MEMORY_SHARE = 0.5  # the transformers model that reads the embeddings shares the GPU


def vllm_engine_args(folder: str, device: str, dtype: str, max_model_len: int) -> dict:
    """``vllm.LLM`` keyword arguments for the model saved in ``folder``; a ``UserError`` where vLLM cannot run."""
    if not device.startswith("cuda"):
        raise UserError(f"the vllm backend generates on a CUDA GPU, and this run's device is {device} "
                        "(use --backend transformers)")
    if device not in ("cuda", "cuda:0"):
        raise UserError(f"vLLM generates on the first visible GPU: instead of --device {device}, select the GPU with "
                        f"CUDA_VISIBLE_DEVICES={device.removeprefix('cuda:')} and --device cuda")
    return {"model": folder, "tokenizer": folder, "dtype": dtype, "max_model_len": max_model_len, "seed": 0,
            "gpu_memory_utilization": VLLM_GPU_MEMORY_SHARE}


def vllm_sampling_args(max_new_tokens: int, stop_ids: list[int], phrase: str) -> dict:
    """``vllm.SamplingParams`` keyword arguments: greedy, ending where the transformers generator ends (the direct
    phrase kept in the analysis)."""
    return {"max_tokens": max_new_tokens, "temperature": 0.0, "stop_token_ids": stop_ids, "skip_special_tokens": True,
            "stop": [phrase] if phrase else None, "include_stop_str_in_output": True}


class VLLMGenerator:
    """Generation with vLLM (GPU); the embedding itself is still read with transformers. vLLM loads the weights the
    embedding pass uses (a merged adapter, an added embed token, a de-quantized GGUF), saved to a temporary folder."""

    def __init__(self, model, tokenizer, embed_id: int, max_model_len: int, direct_answer: str):
        try:
            import vllm
        except ImportError as exc:
            raise UserError("the vllm backend needs vLLM: pip install 'searchr3-eval[vllm]' (GPU only)") from exc
        dtype = str(model.dtype).removeprefix("torch.")
        self.folder = tempfile.TemporaryDirectory(prefix="searchr3-vllm-")
        engine = vllm_engine_args(self.folder.name, str(model.device), dtype, max_model_len)
        model.save_pretrained(self.folder.name)
        tokenizer.save_pretrained(self.folder.name)
        self.vllm, self.llm = vllm, vllm.LLM(**engine)
        self.stop_ids, self.phrase = stop_token_ids(tokenizer, embed_id), direct_phrase(direct_answer)

    def __call__(self, prompts: list[list[int]], max_new_tokens: int) -> list[str]:
        return [row[0] for row in self.sample(prompts, max_new_tokens, 1, 0.0, 0)]

    def sample(self, prompts: list[list[int]], max_new_tokens: int, samples: int, temperature: float,
               seed: int) -> list[list[str]]:
        args = vllm_sampling_args(max_new_tokens, self.stop_ids, self.phrase)
        params = self.vllm.SamplingParams(**{**args, "n": samples, "temperature": temperature, "seed": seed})
        outputs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        return [[c.text.strip() for c in o.outputs] for o in outputs]
