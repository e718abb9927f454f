"""Typed evaluation results: one ``TaskResult`` per (model identity, task), stored as versioned JSON.

A result's identity is everything that changes its numbers: the model spec, the weights' revision, the encoder
settings, the task, its split, a fingerprint of the task's files and ``top_k``. Results with different
identities never overwrite or merge with each other.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from searchr3_eval.atomic import atomic_write_json
from searchr3_eval.errors import UserError

SCHEMA_VERSION = 2


@dataclass(frozen=True)
class ModelIdentity:
    """What identifies a model's embeddings or rankings, known before the model is loaded."""

    spec: str
    revision: str
    settings: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"model_spec": self.spec, "revision": self.revision, "settings": self.settings}


def identity_key(identity: dict[str, Any]) -> str:
    """A short stable hash of an identity dictionary."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]


def result_identity(model: ModelIdentity, task: str, split: str, task_fingerprint: str, top_k: int,
                    index: str = "flat") -> dict[str, Any]:
    """The identity of one result; ``index`` (a canonical faiss index name) appears only when it is approximate, so
    exact-search results keep the identity they always had."""
    return {**model.as_dict(), "task": task, "split": split, "task_fingerprint": task_fingerprint, "top_k": top_k,
            **_index_field(index)}


def _index_field(index: str) -> dict[str, str]:
    return {} if index == "flat" else {"index": index}


def slug(text: str) -> str:
    """A file-name-safe form of ``text`` that can never be '.', '..' or contain a path separator."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_") or "model"


def result_path(output_dir: Path, identity: dict[str, Any]) -> Path:
    """``<output_dir>/runs/<model spec>/<task>-<identity hash>.json``."""
    name = f"{slug(identity['task'])}-{identity_key(identity)}.json"
    return output_dir / "runs" / slug(identity["model_spec"]) / name


@dataclass
class TaskResult:
    """Scores of one model identity on one task split, with per-query scores and run facts."""

    model: str  # display name
    model_spec: str
    revision: str
    settings: dict[str, Any]
    task: str
    split: str
    default_split: str
    task_fingerprint: str
    top_k: int
    scores: dict[str, float]
    per_query: dict[str, dict[str, float]]  # metric -> query id -> score
    num_documents: int
    num_queries: int
    source: str
    timing: dict[str, Any] = field(default_factory=dict)
    finished_at: str = ""
    searchr3_eval_version: str = ""
    index: str = "flat"  # the dense search's faiss index (canonical name); flat is exact
    schema_version: int = SCHEMA_VERSION

    @property
    def model_identity(self) -> dict[str, Any]:
        return {"model_spec": self.model_spec, "revision": self.revision, "settings": self.settings, "top_k": self.top_k,
                **_index_field(self.index)}

    @property
    def identity(self) -> dict[str, Any]:
        return {"model_spec": self.model_spec, "revision": self.revision, "settings": self.settings, "task": self.task,
                "split": self.split, "task_fingerprint": self.task_fingerprint, "top_k": self.top_k,
                **_index_field(self.index)}

    @property
    def non_default_split(self) -> bool:
        return self.split != self.default_split

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, where: str = "result") -> "TaskResult":
        if not isinstance(data, dict):
            raise UserError(f"{where}: a result must be a JSON object")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise UserError(f"{where}: result schema version {version!r}, expected {SCHEMA_VERSION} "
                            "(written by another searchr3-eval version); delete it and re-run")
        names = {f.name for f in fields(cls)}
        missing = sorted(n for n in names if n not in data and n not in ("timing", "finished_at", "searchr3_eval_version", "index"))
        if missing:
            raise UserError(f"{where}: result lacks {', '.join(missing)}")
        return cls(**{k: v for k, v in data.items() if k in names})

    def save(self, output_dir: Path) -> Path:
        return atomic_write_json(result_path(output_dir, self.identity), self.to_dict())


def read_result(path: Path) -> TaskResult:
    """Parse one result file; unreadable or malformed files raise ``UserError`` naming the file."""
    try:
        raw = Path(path).read_bytes()
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise UserError(f"unreadable result file {path}: not valid UTF-8 at line {line}") from exc
    except json.JSONDecodeError as exc:
        raise UserError(f"unreadable result file {path}: {exc.msg} at line {exc.lineno}") from exc
    except OSError as exc:
        raise UserError(f"unreadable result file {path}: {exc.strerror}") from exc
    return TaskResult.from_dict(data, where=f"result file {path}")


def load_results(output_dir: Path) -> list[TaskResult]:
    """Every result under ``<output_dir>/runs``."""
    return [read_result(path) for path in sorted((Path(output_dir) / "runs").glob("*/*.json"))]
