"""Typed evaluation results: one ``TaskResult`` per (model identity, task), stored as versioned JSON.

A result's identity is everything that changes its numbers: the model spec, the weights' revision, the encoder
settings, the task, its split, a fingerprint of the task's files and ``top_k``. Results with different
identities never overwrite or merge with each other.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import logging
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from searchr3_eval.atomic import atomic_write, atomic_write_json
from searchr3_eval.errors import UserError
from searchr3_eval.metrics import Run

log = logging.getLogger(__name__)

SCHEMA_VERSION = 3
# Version 2 files are migrated when read (as mteb's TaskResult.from_disk does): a Search-R3 result with reasoning off
# held the generation settings (which cannot change a direct embedding) in its identity, ``source`` was the absolute
# path of the machine that made it, and a model could be named by a bare name or an alias of the canonical spec.
V2_GENERATION_SETTINGS = ("max_new_tokens", "backend", "analysis_end")


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


def ranking_path(path: Path) -> Path:
    """Where the ranked run of the result stored at ``path`` is kept: beside it, as a gzipped TREC run."""
    return path.with_suffix(".run.gz")


def write_ranking(path: Path, run: Run, tag: str) -> Path:
    """``run`` (each query's top-k documents and scores) as a gzipped TREC run file, written atomically."""
    def write(tmp: str) -> None:
        with gzip.open(tmp, "wt", encoding="utf-8", compresslevel=6) as out:
            for qid in sorted(run):
                ranked = sorted(run[qid].items(), key=lambda kv: (-kv[1], kv[0]))
                out.writelines(f"{qid}\tQ0\t{doc}\t{rank}\t{score:.7g}\t{tag}\n"
                               for rank, (doc, score) in enumerate(ranked, 1))

    return atomic_write(path, write)


def read_ranking(path: Path) -> Run:
    """A run ``write_ranking`` wrote; an unreadable file is a ``UserError`` naming it."""
    run: Run = {}
    try:
        with gzip.open(path, "rt", encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                fields_ = line.rstrip("\n").split("\t")
                if len(fields_) != 6:
                    raise UserError(f"ranking file {path} line {number}: expected 6 tab-separated TREC columns")
                run.setdefault(fields_[0], {})[fields_[2]] = float(fields_[4])
    except (OSError, EOFError, ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"unreadable ranking file {path} ({exc}); re-run its result with --overwrite") from exc
    return run


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
        if version == 2:
            data, version = migrate_v2(data), SCHEMA_VERSION
        if version != SCHEMA_VERSION:
            raise UserError(f"{where}: result schema version {version!r}, expected {SCHEMA_VERSION} "
                            "(written by another searchr3-eval version); delete it and re-run")
        names = {f.name for f in fields(cls)}
        missing = sorted(n for n in names if n not in data and n not in ("timing", "finished_at", "searchr3_eval_version", "index"))
        if missing:
            raise UserError(f"{where}: result lacks {', '.join(missing)}")
        return cls(**{k: v for k, v in data.items() if k in names})

    def save(self, output_dir: Path, run: Run | None = None) -> Path:
        """Write atomically to ``result_path``, with the ranked ``run`` beside it (written first, so a result is
        never without the ranking it reports); an older file of the same identity (a migrated one) is removed."""
        path = result_path(output_dir, self.identity)
        if run is not None:
            write_ranking(ranking_path(path), run, slug(self.model_spec))
        atomic_write_json(path, self.to_dict())
        for other in _same_task_files(output_dir, self.task):
            if other != path and _identity_of(other) == self.identity:
                other.unlink(missing_ok=True)
                ranking_path(other).unlink(missing_ok=True)
        return path


MINILM = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_ALIASES = ("minilm", "all-MiniLM-L6-v2")  # the short names the CLI accepts for it


def canonical_spec(spec: str) -> str:
    """One name for one model: all-MiniLM-L6-v2 by any of its names is ``minilm``, a bare sentence-transformers
    name is ``st:<name>``, a trailing slash of a path is dropped."""
    kind, sep, arg = spec.partition(":")
    if not (sep and kind in ("st", "searchr3", "basellm")) and spec != "bm25":
        kind, arg = "st", spec
    arg = arg.rstrip("/") or arg
    if kind == "st" and arg in (*MINILM_ALIASES, MINILM):
        return "minilm"
    return spec if spec == "bm25" else f"{kind}:{arg}"


def migrate_v2(data: dict[str, Any]) -> dict[str, Any]:
    """A schema-2 result as schema 3 (see ``SCHEMA_VERSION``)."""
    data = {**data, "schema_version": SCHEMA_VERSION}
    if isinstance(data.get("model_spec"), str):
        data["model_spec"] = canonical_spec(data["model_spec"])
    settings = data.get("settings")
    if isinstance(settings, dict) and settings.get("reasoning") == "off" and "prompts" in settings:
        settings = {k: v for k, v in settings.items() if k not in V2_GENERATION_SETTINGS}
        if isinstance(settings["prompts"], dict):
            settings["prompts"] = {k: v for k, v in settings["prompts"].items() if k != "reasoning_system"}
        data["settings"] = settings
    if isinstance(data.get("source"), str):
        data["source"] = _v2_origin(data["source"])
    return data


def _v2_origin(source: str) -> str:
    """A version-2 ``source`` (the folder as given, often absolute) as ``data.task_origin`` names it."""
    path = Path(source)
    if "searchr3_eval/datasets" in path.as_posix():
        return f"embedded:{path.name}"
    return path.name if path.is_absolute() or ".." in path.parts else path.as_posix()


def _same_task_files(output_dir: Path, task: str) -> list[Path]:
    """Every result file of ``task`` under ``output_dir/runs``, whichever model folder (a migrated spec may have
    been written under another folder name)."""
    return sorted((Path(output_dir) / "runs").glob(f"*/{slug(task)}-*.json"))


def _identity_of(path: Path) -> dict[str, Any] | None:
    try:
        return read_result(path).identity
    except UserError:
        return None


def find_result(output_dir: Path, identity: dict[str, Any]) -> tuple[Path, TaskResult | None]:
    """Where a result of ``identity`` is (or would be written) and the readable result with exactly that identity
    stored there or, migrated from an older schema, under another name; None when there is none. An unreadable
    file at the expected place is logged and redone."""
    path = result_path(output_dir, identity)
    candidates = [path] + [p for p in _same_task_files(output_dir, identity["task"]) if p != path]
    for candidate in candidates:
        if not candidate.exists():
            continue
        try:
            result = read_result(candidate)
        except UserError as exc:
            if candidate == path:
                log.warning("%s; redoing it", exc)
            continue
        if result.identity == identity:
            return candidate, result
    return path, None


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
    """Every result under ``<output_dir>/runs``, one per identity (of files that migrate to the same identity, the
    one finished last)."""
    latest: dict[str, TaskResult] = {}
    for path in sorted((Path(output_dir) / "runs").glob("*/*.json")):
        result = read_result(path)
        key = identity_key(result.identity)
        if key not in latest or result.finished_at > latest[key].finished_at:
            latest[key] = result
    return list(latest.values())
