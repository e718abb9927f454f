"""Training configs, read from YAML; unknown keys are an error."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from types import UnionType
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from searchr3_eval.errors import UserError
from searchr3_eval.models.lm.device import resolve_device
from searchr3_eval.models.lm.prompt_format import resolve_prompts


@dataclass
class LossWeights:
    sft: float = 1.0
    kl: float = 0.1
    infonce: float = 1.0
    triplet: float = 1.0


@dataclass(kw_only=True)
class RunConfig:
    """Fields every stage shares: the model, where outputs go, LoRA and run settings."""

    model: str
    output_dir: str
    lora: bool = False
    lora_r: int = 8
    lora_alpha: int = 16
    train_layers: int | None = None  # train only the top N layers; the frozen lower layers' outputs are cached
    max_length: int = 256
    save_every: int = 50
    seed: int = 0
    dtype: str = "float32"  # weights and optimiser state
    mixed_precision: str = "auto"  # bf16 autocast for forwards: auto (where bf16 is native), bf16 or no
    attn_implementation: str = "auto"  # auto: eager on CPU (faster there), sdpa on a CUDA GPU
    device: str = "auto"  # auto (a GPU when present), cpu, cuda, cuda:N or mps
    prompts: str | None = None  # prompt preset (searchr3_eval PROMPT_PRESETS); default: the starting adapter's, else paper
    batch_tokens: int = 4096  # padded tokens per forward chunk (SFT batches, the RL environment's encoding): longest first
    lr_schedule: str = "constant"  # constant, linear or cosine (decay to 0 over the run), after warmup_steps
    warmup_steps: int = 0  # the learning rate rises linearly from 0 over these steps
    max_grad_norm: float | None = None  # clip the gradients' global norm to this (none: no clipping; the norm is logged)
    # train a query adapter: a new LoRA over the Search-R3 model ``model`` that only queries use; documents are the
    # evaluation's embeddings of ``model``, computed once (and cached) and never refreshed (trainer.frozen_index)
    query_adapter: bool = False
    cache_dir: str | None = None  # query_adapter: the embedding cache of the frozen documents (default: the evaluation's)


@dataclass(kw_only=True)
class SFTConfig(RunConfig):
    train_file: str | None = None  # jsonl of {"query", "positive", "negatives": [...]}
    eval_file: str | None = None
    beir_dir: str | None = None  # or mine triples from a BEIR folder's qrels with BM25
    beir_split: str = "train"
    num_negatives: int = 1
    max_query_length: int | None = None  # per-role caps (tokens of the whole sequence); default max_length
    max_document_length: int | None = None
    weights: LossWeights = field(default_factory=LossWeights)
    temperature: float = 0.05
    margin: float = 0.2
    learning_rate: float = 2e-5
    batch_size: int = 8
    grad_accum: int = 1
    epochs: int = 1
    max_steps: int | None = None
    eval_every: int | None = None  # held-out InfoNCE every N steps (and at the end); final = the best
    # also train each query that has an analysis in reasoning format (analysis, the direct phrase, the embed token);
    # the language-model loss then covers only those answers, since a direct answer is never generated
    reasoning: bool = False
    # words every trained analysis starts with (e.g. "Relevant paper: "): a greedy first token that only a reasoning
    # answer has, where an analysis's own first word is spread over many and loses to the direct phrase's "The"
    analysis_lead: str = ""
    # query_adapter: BEIR folders whose corpora together are the frozen index (it must hold every positive)
    index_dirs: list[str] = field(default_factory=list)


@dataclass(kw_only=True)
class DataConfig:
    """Training data assembled from several sources into ``<output_dir>/train.jsonl`` and ``heldout.jsonl``."""

    output_dir: str
    beir_dirs: list[str] = field(default_factory=list)  # BEIR folders: triples from their qrels, BM25 negatives
    beir_split: str = "train"
    pair_files: list[str] = field(default_factory=list)  # jsonl {"query", "positive", "negatives"?, "split"?}
    keep_splits: list[str] = field(default_factory=lambda: ["TRAIN"])  # rows with a "split" field: which to keep
    num_negatives: int = 1
    max_positives: int | None = None  # BEIR sources: at most this many judged positives of each query (sampled)
    case_fraction: float = 0.0  # add upper-cased copies of this fraction of the training triples (trainer.data.case_variants)
    heldout_fraction: float = 0.1  # of each source's distinct queries, for model selection
    seed: int = 0


@dataclass(kw_only=True)
class RLConfig(RunConfig):
    train_file: str | None = None  # jsonl triples; queries are the prompts, positives and negatives the corpus
    beir_dir: str | None = None  # or a BEIR folder: its beir_split qrels give the queries, its whole corpus the index
    beir_split: str = "train"
    max_document_length: int | None = None  # cap on the environment's document sequences
    group_size: int = 4
    max_new_tokens: int = 32
    temperature: float = 1.0
    clip_eps: float = 0.2
    kl_beta: float = 0.02
    format_reward: float = 0.5
    bare_penalty: float = 0.0  # taken from the reward of an answer that writes no analysis (``rl.is_bare``)
    ppo_epochs: int = 1
    learning_rate: float = 1e-5
    batch_size: int = 4
    steps: int = 20
    top_k: int = 10
    refresh_every: int = 10  # the whole corpus is re-encoded across this many steps
    rank_band: float = 0.0  # also re-encode, before a reward, the documents scoring this close to the positive
    drift_band: float = 0.0  # or that many times the largest score drift measured on the round-robin slice (per query)
    audit_every: int = 0  # every this many steps, compare the ranks rewarded with a freshly encoded index's (0: never)
    audit_queries: int = 0  # at the end, compare the maintained index with a fresh one on this many train queries
    audit_noise: float = 0.0  # the audits also count a rank as agreeing within the fresh ranks at scores +- this
    heldout_fraction: float = 0.0  # of the distinct train queries, never trained on: their greedy MRR picks final
    eval_every: int | None = None  # the held-out MRR every N steps (and at step 0 and the end)
    # InfoNCE of each rollout's embedding against the whole index, beside the policy gradient: the embedding learns to
    # read the analyses the policy writes (0: the policy gradient alone)
    embedding_weight: float = 0.0
    embedding_temperature: float = 0.05  # that InfoNCE's temperature


T = TypeVar("T")
CHOICES = {"mixed_precision": ("auto", "bf16", "no"), "attn_implementation": ("auto", "eager", "sdpa"),
           "dtype": ("float32", "bfloat16"), "lr_schedule": ("constant", "linear", "cosine")}
POSITIVE = {"max_query_length", "max_document_length", "batch_size", "grad_accum", "epochs", "max_steps", "group_size", "steps", "max_length", "save_every",
            "refresh_every", "top_k", "lora_r", "train_layers", "eval_every", "batch_tokens", "max_new_tokens", "ppo_epochs",
            "max_positives"}
# value ranges checked before anything loads: (test, what the message says it must be)
RANGES = {
    **dict.fromkeys(("learning_rate", "temperature", "clip_eps", "max_grad_norm", "embedding_temperature"),
                    (lambda v: v > 0, "greater than 0")),
    "warmup_steps": (lambda v: v >= 0, "at least 0"),
    **dict.fromkeys(("margin", "kl_beta", "rank_band", "drift_band", "audit_noise", "sft", "kl", "infonce", "triplet",
                     "embedding_weight", "bare_penalty"),
                    (lambda v: v >= 0, "at least 0")),
    "heldout_fraction": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "case_fraction": (lambda v: 0 <= v <= 1, "in [0, 1]"),
}


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """``value`` as the field's type, or a ``UserError`` naming the key. YAML reads ``1e-4`` as a string, so a
    string that parses as a number is accepted for a float field."""
    options = get_args(hint) if get_origin(hint) in (Union, UnionType) else (hint,)
    if value is None and type(None) in options:
        return None
    if isinstance(value, dict) and LossWeights in options:
        return from_dict(LossWeights, value, prefix=f"{key}.")
    if list[str] in options and isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    for kind in options:
        if kind is bool and isinstance(value, bool):
            return value
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind is float and not isinstance(value, bool):
            if isinstance(value, (int, float)):
                return float(value)
            if isinstance(value, str):
                try:
                    return float(value)
                except ValueError:
                    pass
        if kind is str and isinstance(value, str):
            return value
    names = " or ".join("null" if k is type(None) else "a list of strings" if k == list[str]
                        else getattr(k, "__name__", str(k)) for k in options)
    raise UserError(f"{key} must be {names}, not {value!r}")


def from_dict(cls: type[T], data: dict, prefix: str = "") -> T:
    """Build a config from a mapping; unknown keys, missing keys and wrongly typed values name the key."""
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise UserError(f"unknown {cls.__name__} keys: {', '.join(prefix + k for k in unknown)}")
    hints = get_type_hints(cls)
    values = {key: _coerce(prefix + key, value, hints[key]) for key, value in data.items()}
    for key in CHOICES.keys() & set(values):
        if values[key] not in CHOICES[key]:
            raise UserError(f"{prefix}{key} must be one of {', '.join(CHOICES[key])}, not {values[key]!r}")
    if "device" in values:
        resolve_device(values["device"])
    if values.get("prompts") is not None:
        resolve_prompts(values["prompts"])
    for key in POSITIVE & set(values):
        if values[key] is not None and values[key] < 1:
            raise UserError(f"{prefix}{key} must be at least 1, not {values[key]}")
    for key in RANGES.keys() & set(values):
        test, allowed = RANGES[key]
        if values[key] is not None and not test(values[key]):
            raise UserError(f"{prefix}{key} must be {allowed}, not {values[key]}")
    try:
        return cls(**values)
    except TypeError as exc:
        raise UserError(f"bad {cls.__name__}: {exc}") from exc


def load_config(path: Path, cls: type[T]) -> T:
    if not Path(path).is_file():
        raise UserError(f"missing file: {path}")
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path} line {mark.line + 1}" if mark is not None else str(path)
        raise UserError(f"malformed YAML in {where}: {getattr(exc, 'problem', None) or exc}") from exc
    if not isinstance(data, dict):
        raise UserError(f"{path}: the config must be a mapping")
    try:
        return from_dict(cls, data)
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from exc
