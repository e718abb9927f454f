"""Model specs on the command line -> retrievers.

``bm25``; ``minilm`` or ``st:<name or path>`` (sentence-transformers); ``searchr3:<path>`` (Search-R3);
``basellm:<path>`` (untuned LLM, last-token pooling). ``smollm2`` as a path means the packaged
SmolLM2-135M-Instruct; ``searchr3:smollm2`` adds an untrained embed token to it.
"""
from __future__ import annotations

from dataclasses import dataclass

from searchr3_eval.cache import EmbeddingCache
from searchr3_eval.errors import UserError
from searchr3_eval.models.base import DenseEncoder
from searchr3_eval.models.bm25 import BM25Retriever

DEFAULT_MODELS = "bm25,minilm,searchr3:smollm2"


@dataclass
class ModelOptions:
    batch_size: int = 32
    reasoning: str = "off"
    max_length: int = 512
    max_new_tokens: int = 64
    dtype: str = "float32"
    backend: str = "transformers"
    add_embed_token: bool = False
    show_progress: bool = True


def parse_model_specs(spec: str) -> list[str]:
    specs = [s.strip() for s in spec.split(",") if s.strip()]
    if not specs:
        raise UserError("no model given")
    for s in specs:
        kind, _, arg = s.partition(":")
        if ":" in s and kind in ("st", "searchr3", "basellm") and not arg:
            raise UserError(f"model spec {s!r} needs a name or path after the colon")
    return specs


def load_model(spec: str, options: ModelOptions, cache: EmbeddingCache | None) -> BM25Retriever | DenseEncoder:
    kind, sep, arg = spec.partition(":")
    common = {"batch_size": options.batch_size, "cache": cache, "show_progress": options.show_progress}
    if spec == "bm25":
        return BM25Retriever(show_progress=options.show_progress)
    if sep and kind == "searchr3":
        from searchr3_eval.models.searchr3 import SearchR3Encoder

        return SearchR3Encoder.from_pretrained(
            arg,
            dtype=options.dtype,
            add_token=options.add_embed_token or arg.lower() == "smollm2",
            reasoning=options.reasoning,
            max_length=options.max_length,
            max_new_tokens=options.max_new_tokens,
            backend=options.backend,
            **common,
        )
    if sep and kind == "basellm":
        from searchr3_eval.models.base_llm import LastTokenEncoder

        return LastTokenEncoder(arg, dtype=options.dtype, max_length=options.max_length, **common)
    from searchr3_eval.models.sentence_transformer import SentenceTransformerEncoder

    return SentenceTransformerEncoder(arg if sep and kind == "st" else spec, **common)
