"""Model specs on the command line -> retrievers.

``bm25``; ``minilm`` or ``st:<name or path>`` (sentence-transformers; a bare name also works);
``searchr3:<path>`` (Search-R3); ``basellm:<path>`` (untuned LLM, last-token pooling). ``smollm2`` as a path means
the packaged SmolLM2-135M-Instruct; ``searchr3:smollm2`` adds an untrained embed token to it; ``searchr3:<name>``
is a trained model shipped in the package (``searchr3_eval/weights/<name>``; the default
``smollm2-sft-distill-grow16-query-minilm``, a query adapter trained over ``smollm2-sft-distill-grow16``).

``describe`` gives a spec's identity (revision and settings) without loading weights, so finished results can be
recognised before any model loads; ``load_model`` builds the retriever.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from searchr3_eval.cache import EmbeddingCache
from searchr3_eval.errors import UserError
from searchr3_eval.models.base import DenseEncoder, Retriever
from searchr3_eval.models.base_llm import LastTokenEncoder
from searchr3_eval.models.bm25 import BM25Retriever, bm25_revision, bm25_settings
from searchr3_eval.models.lm.device import resolve_device, resolve_dtype
from searchr3_eval.models.lm.locate import llm_revision
from searchr3_eval.models.options import ModelOptions, split_spec_options, with_spec_options
from searchr3_eval.models.searchr3 import SearchR3Encoder, SearchR3Settings
from searchr3_eval.models.sentence_transformer import SentenceTransformerEncoder, model_revision, st_settings
from searchr3_eval.fusion import FusionRetriever, FusionSpec, parse_fusion, split_top_level
from searchr3_eval.results import ModelIdentity, canonical_spec, identity_key
from searchr3_eval.retrieval import parse_index

DEFAULT_MODELS = "bm25,minilm,searchr3:smollm2-sft-distill-grow16-query-minilm"


@dataclass(frozen=True)
class ModelSpec:
    """One model as named on the command line: ``text`` its canonical name, its kind and argument, and ``options``
    of its own (``searchr3:smollm2-sft-query[reasoning=on,max_new_tokens=32]``) over the run's."""

    text: str
    kind: str
    arg: str
    options: tuple[tuple[str, str], ...] = ()

    @property
    def label(self) -> str:
        """The spec as it is written, options included."""
        return self.text + (f"[{','.join(f'{k}={v}' for k, v in self.options)}]" if self.options else "")

    @property
    def is_dense(self) -> bool:
        """An embedding model: it uses the embedding cache and the dense index."""
        return self.kind not in ("bm25", "fusion")

    @property
    def fusion(self) -> FusionSpec:
        return parse_fusion(self.arg)

    @property
    def members(self) -> list["ModelSpec"]:
        """A fused spec's members, each after its own members (what must be scored before it); else none."""
        if self.kind != "fusion":
            return []
        specs = [parse_model_spec(m) for m in self.fusion.members]
        return list(dict.fromkeys(s for member in specs for s in [*member.members, member]))

    @property
    def adds_embed_token(self) -> bool:
        return self.kind == "searchr3" and self.arg.lower() == "smollm2"


def parse_model_spec(text: str) -> ModelSpec:
    """A spec in its canonical form (``results.canonical_spec``), so one model named two ways is one identity; a dense
    model's own options follow its name in brackets."""
    base, options = split_spec_options(text)
    if options:
        spec = parse_model_spec(base)
        if not spec.is_dense:
            raise UserError(f"model spec {text!r}: only embedding models take options of their own")
        return ModelSpec(spec.text, spec.kind, spec.arg, options)
    if text == "bm25":
        return ModelSpec(text, "bm25", "")
    if text.startswith("fusion:"):
        fusion = parse_fusion(text.removeprefix("fusion:"))
        canonical = fusion.text([parse_model_spec(m).label for m in fusion.members])
        return ModelSpec(canonical, "fusion", canonical.removeprefix("fusion:"))
    kind, sep, arg = text.partition(":")
    if sep and kind in ("st", "searchr3", "basellm") and not arg:
        raise UserError(f"model spec {text!r} needs a name or path after the colon")
    text = canonical_spec(text)
    kind, _, arg = text.partition(":")
    return ModelSpec(text, "st", "minilm") if text == "minilm" else ModelSpec(text, kind, arg)


def parse_model_specs(spec: str) -> list[ModelSpec]:
    """A comma list of specs; a spec given twice runs once."""
    specs = list(dict.fromkeys(parse_model_spec(s.strip()) for s in split_top_level(spec) if s.strip()))
    if not specs:
        raise UserError("no model given")
    return specs


def searchr3_config(spec: ModelSpec, options: ModelOptions) -> SearchR3Settings:
    """The settings a Search-R3 spec is loaded with, and known by: the prompts default to the preset the model was
    trained with, the case folding to the model's own, the dtype is resolved for the device."""
    return SearchR3Settings.for_model(
        spec.arg, preset=options.prompts, system_prompt=options.system_prompt, query_prompt=options.query_prompt,
        document_prompt=options.document_prompt, case_fold=options.case_fold, dtype=options.dtype,
        device=options.device, reasoning=options.reasoning, max_length=options.max_length,
        max_new_tokens=options.max_new_tokens, backend=options.backend,
        add_embed_token=options.add_embed_token or spec.adds_embed_token, reasoning_samples=options.reasoning_samples,
        reasoning_temperature=options.reasoning_temperature, reasoning_direct_weight=options.reasoning_direct_weight)


def describe(spec: ModelSpec, options: ModelOptions) -> ModelIdentity:
    """The spec's identity: weights revision (a content hash) and every setting that changes its output."""
    options = with_spec_options(options, spec.options, spec.label)
    if spec.kind == "bm25":
        return ModelIdentity(spec.text, bm25_revision(), bm25_settings())
    if spec.kind == "fusion":
        described = [{**m.as_dict(), **({"index": i} if i != "flat" else {})} for m, i in fusion_members(spec, options)]
        params = {"k": spec.fusion.k} if spec.fusion.method == "rrf" else {"weights": list(spec.fusion.weights)}
        return ModelIdentity(spec.text, identity_key({"members": described}),
                             {"method": spec.fusion.method, **params, "members": described})
    if spec.kind == "st":
        return ModelIdentity(spec.text, model_revision(spec.arg), st_settings(options.query_prompt, options.document_prompt))
    if spec.kind == "basellm":
        dtype = resolve_dtype(options.dtype, resolve_device(options.device))
        return ModelIdentity(spec.text, llm_revision(spec.arg), {"max_length": options.max_length, "dtype": dtype})
    return ModelIdentity(spec.text, llm_revision(spec.arg), searchr3_config(spec, options).identity())


def index_of(spec: ModelSpec, options: ModelOptions) -> str:
    """The canonical name of the index a spec searches with (dense models: ``--index`` or their own; others flat)."""
    return parse_index(with_spec_options(options, spec.options, spec.label).index).name if spec.is_dense else "flat"


def fusion_members(spec: ModelSpec, options: ModelOptions) -> list[tuple[ModelIdentity, str]]:
    """Each member of a fused spec: its identity and the index it searches with."""
    return [(describe(m, options), index_of(m, options)) for m in map(parse_model_spec, spec.fusion.members)]


def load_model(spec: ModelSpec, options: ModelOptions, cache: EmbeddingCache | None,
               results_dir: Path | None = None) -> Retriever:
    """The retriever of ``spec``; a fused spec reads its members' rankings from ``results_dir``."""
    options = with_spec_options(options, spec.options, spec.label)
    device = resolve_device(options.device)
    common = {"batch_size": options.batch_size, "batch_tokens": options.batch_tokens, "cache": cache,
              "show_progress": options.show_progress, "device": device, "index": options.index,
              "memmap_dir": options.memmap_dir}
    if spec.kind == "bm25":
        return BM25Retriever(show_progress=options.show_progress)
    if spec.kind == "fusion":
        return FusionRetriever(spec.fusion, describe(spec, options), fusion_members(spec, options),
                               Path(results_dir or "results"))
    if spec.kind == "searchr3":
        return SearchR3Encoder.from_settings(spec.arg, searchr3_config(spec, options), **common)
    if spec.kind == "basellm":
        return LastTokenEncoder(spec.arg, dtype=options.dtype, max_length=options.max_length, **common)
    return SentenceTransformerEncoder(spec.arg, query_prompt=options.query_prompt,
                                      document_prompt=options.document_prompt, **common)


__all__ = ["BM25Retriever", "DenseEncoder", "ModelOptions", "ModelSpec", "Retriever", "describe", "load_model",
           "parse_model_specs"]
