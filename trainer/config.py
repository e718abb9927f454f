"""Training configs, read from YAML; unknown keys are an error."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TypeVar

import yaml

from searchr3_eval.errors import UserError


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
    max_length: int = 256
    save_every: int = 50
    seed: int = 0
    dtype: str = "float32"


@dataclass(kw_only=True)
class SFTConfig(RunConfig):
    train_file: str | None = None  # jsonl of {"query", "positive", "negatives": [...]}
    eval_file: str | None = None
    beir_dir: str | None = None  # or mine triples from a BEIR folder's qrels with BM25
    beir_split: str = "train"
    num_negatives: int = 1
    weights: LossWeights = field(default_factory=LossWeights)
    temperature: float = 0.05
    margin: float = 0.2
    learning_rate: float = 2e-5
    batch_size: int = 8
    grad_accum: int = 1
    epochs: int = 1
    max_steps: int | None = None


@dataclass(kw_only=True)
class RLConfig(RunConfig):
    train_file: str  # jsonl triples; queries are the prompts, positives and negatives the corpus
    group_size: int = 4
    max_new_tokens: int = 32
    temperature: float = 1.0
    clip_eps: float = 0.2
    kl_beta: float = 0.02
    format_reward: float = 0.5
    ppo_epochs: int = 1
    learning_rate: float = 1e-5
    batch_size: int = 4
    steps: int = 20
    top_k: int = 10
    refresh_every: int = 10  # the whole corpus is re-encoded across this many steps


T = TypeVar("T")


def from_dict(cls: type[T], data: dict) -> T:
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise UserError(f"unknown {cls.__name__} keys: {', '.join(unknown)}")
    if "weights" in data and isinstance(data["weights"], dict):
        data = {**data, "weights": from_dict(LossWeights, data["weights"])}
    try:
        return cls(**data)
    except TypeError as exc:
        raise UserError(f"bad {cls.__name__}: {exc}") from exc


def load_config(path: Path, cls: type[T]) -> T:
    if not Path(path).is_file():
        raise UserError(f"missing file: {path}")
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"malformed YAML in {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise UserError(f"{path}: the config must be a mapping")
    return from_dict(cls, data)
