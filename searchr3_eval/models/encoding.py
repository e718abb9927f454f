"""Encoding many texts with an embedder: the embedding cache, batches planned longest first within a token budget,
the work split across processes, and a guard against non-finite embeddings. The embedder only embeds one batch."""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from tqdm.auto import tqdm

from searchr3_eval.cache import EmbeddingCache, text_hash
from searchr3_eval.data import Kind
from searchr3_eval.distributed import broadcast_from_main, gather_to_main, rank_and_size
from searchr3_eval.errors import UserError

PLURAL = {"query": "queries", "document": "documents"}
CACHE_CHUNK = 8192  # hashes looked up in the cache at a time
Allocate = Callable[[int, int], np.ndarray]  # (rows, dim) -> the array embeddings are written into


class Embedder(Protocol):
    """What ``encode_texts`` needs of a model: one batch's embeddings, token counts to plan batches with, and the
    cache key of its embeddings of a kind."""

    name: str
    generation_seconds: float  # an embedder that writes reasoning adds its generation time here

    def cache_key(self, kind: Kind) -> str: ...

    def embed(self, texts: list[str], kind: Kind) -> tuple[np.ndarray, list[str] | None]: ...

    def text_lengths(self, texts: list[str], kind: Kind) -> list[int]: ...


AUTO_CPU_TOKENS = 4096  # the CPU's budget for --batch-tokens auto (benchmarks/bench_encoders.py)
AUTO_MAX_TOKENS = 262_144
AUTO_MEMORY_SHARE = 0.25  # of the GPU's free memory, for one batch's activations and KV cache


def auto_batch_tokens(device: str, bytes_per_token: int, free_bytes: int | None = None) -> int:
    """``--batch-tokens auto``: ``AUTO_CPU_TOKENS`` off CUDA; on a CUDA GPU, as many tokens as a share of its free
    memory (``free_bytes``, default measured now) holds at ``bytes_per_token``, within [4096, 262144]."""
    if not device.startswith("cuda") or bytes_per_token <= 0:
        return AUTO_CPU_TOKENS
    if free_bytes is None:
        import torch  # only where a CUDA device is named

        free_bytes = torch.cuda.mem_get_info(torch.device(device))[0]
    return int(min(AUTO_MAX_TOKENS, max(AUTO_CPU_TOKENS, free_bytes * AUTO_MEMORY_SHARE // bytes_per_token)))


def transformer_bytes_per_token(config: Any, dtype_bytes: int) -> int:
    """Memory one token takes in a decoder or encoder forward (a Hugging Face ``config``): a layer's activations
    (hidden states, attention projections and the MLP's intermediate) and the keys and values of every layer (what
    generation keeps); 0 when the config does not say."""
    hidden, intermediate = getattr(config, "hidden_size", 0), getattr(config, "intermediate_size", 0)
    layers, heads = getattr(config, "num_hidden_layers", 0), getattr(config, "num_attention_heads", 0) or 1
    kv_dim = getattr(config, "num_key_value_heads", heads) * getattr(config, "head_dim", hidden // heads)
    return dtype_bytes * (4 * hidden + 2 * intermediate + 2 * layers * kv_dim)


@dataclass(frozen=True)
class Batching:
    """At most ``max_rows`` texts and ``max_tokens`` padded tokens a batch."""

    max_rows: int
    max_tokens: int


@dataclass
class EncodeStats:
    """What the last ``encode`` call did: texts embedded by the model, texts served by the cache, seconds."""

    encoded: int = 0
    cached: int = 0
    seconds: float = 0.0
    reasoning: list[str | None] = field(default_factory=list)
    tokens: int = 0  # tokens of the encoded texts (in the unit ``text_lengths`` counts)
    padded_tokens: int = 0  # tokens the batches held, padding included
    generation_seconds: float = 0.0  # of ``seconds``, spent writing reasoning

    @property
    def padding_waste(self) -> float:
        return 1 - self.tokens / self.padded_tokens if self.padded_tokens else 0.0


def plan_batches(lengths: list[int], max_rows: int, max_tokens: int) -> list[list[int]]:
    """Indices grouped into batches, longest first, each holding at most ``max_rows`` texts and at most
    ``max_tokens`` tokens once padded to its longest text (a text longer than the budget goes alone)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches, start = [], 0
    while start < len(order):
        rows = max(1, min(max_rows, max_tokens // max(1, lengths[order[start]])))
        batches.append(order[start : start + rows])
        start += rows
    return batches


def require_finite(vectors: np.ndarray, name: str, kind: Kind) -> None:
    """A ``UserError`` for a batch with NaN or infinite embeddings: never scored, never cached (a NaN model would
    score 0 silently)."""
    if not np.isfinite(vectors).all():
        broken = int((~np.isfinite(vectors).all(axis=1)).sum())
        raise UserError(f"{name} gave non-finite embeddings (NaN or inf) for {broken} of {len(vectors)} "
                        f"{PLURAL[kind]} in a batch: its weights or settings are broken")


def encode_texts(embedder: Embedder, texts: list[str], kind: Kind, batching: Batching, cache: EmbeddingCache | None,
                 show_progress: bool = True, allocate: Allocate | None = None) -> tuple[np.ndarray, EncodeStats]:
    """Embed ``texts`` with ``embedder`` into the array ``allocate(rows, dim)`` returns (default: in RAM; a
    memory-mapped file holds a corpus larger than RAM), and what it did. Cached texts are not re-encoded; the rest go
    longest-first in ``batching``'s batches. Under ``torchrun`` each rank embeds every world-size-th batch and rank 0
    gathers them (the other ranks return an empty array)."""
    start, generation_start = time.perf_counter(), embedder.generation_seconds
    hashes = [text_hash(t) for t in texts]
    rows_of: dict[str, list[int]] = {}
    for i, h in enumerate(hashes):
        rows_of.setdefault(h, []).append(i)
    key, (rank, size) = embedder.cache_key(kind), rank_and_size()
    out: np.ndarray | None = None
    reasoning: list[str | None] = [None] * len(texts)

    def store(batch_hashes: list[str], vectors: np.ndarray, why: list[str | None] | None, put: bool) -> None:
        nonlocal out
        if out is None:
            out = (allocate or in_memory)(len(texts), vectors.shape[1])
        if put and cache:
            cache.put(key, batch_hashes, vectors, why)
        for j, h in enumerate(batch_hashes):
            out[rows_of[h]] = vectors[j]
            for i in rows_of[h]:
                reasoning[i] = why[j] if why else None

    unique, cached = list(rows_of), set()
    for chunk_start in range(0, len(unique) if cache else 0, CACHE_CHUNK):
        found = cache.get(key, unique[chunk_start : chunk_start + CACHE_CHUNK])
        if found:
            store(list(found), np.stack([v for v, _ in found.values()]), [r for _, r in found.values()], put=False)
            cached.update(found)
    todo: list[str] = broadcast_from_main([h for h in unique if h not in cached])
    lengths = embedder.text_lengths([texts[rows_of[h][0]] for h in todo], kind) if todo else []
    batches = plan_batches(lengths, batching.max_rows, batching.max_tokens)
    mine, done = batches[rank::size], []
    with tqdm(total=sum(map(len, mine)), desc=f"encode {PLURAL[kind]} ({embedder.name})",
              disable=not show_progress or not mine) as bar:
        for batch in mine:
            batch_hashes = [todo[j] for j in batch]
            vectors, why = embedder.embed([texts[rows_of[h][0]] for h in batch_hashes], kind)
            require_finite(vectors, embedder.name, kind)
            if size == 1:  # stored as it goes, so an interrupted run keeps what it encoded
                store(batch_hashes, vectors, why, put=True)
            else:
                done.append((batch_hashes, vectors, why))
            bar.update(len(batch))
    if size > 1:
        for part in gather_to_main(done):
            for batch_hashes, vectors, why in part:
                store(batch_hashes, vectors, why, put=True)
    stats = EncodeStats(
        encoded=len(todo),
        cached=len(texts) - sum(len(rows_of[h]) for h in todo),
        seconds=time.perf_counter() - start,
        reasoning=reasoning,
        tokens=sum(lengths),
        padded_tokens=sum(len(b) * max(lengths[j] for j in b) for b in batches),
        generation_seconds=embedder.generation_seconds - generation_start,
    )
    return (out if out is not None else np.zeros((0, 0), dtype=np.float32)), stats


def in_memory(rows: int, dim: int) -> np.ndarray:
    return np.empty((rows, dim), dtype=np.float32)
