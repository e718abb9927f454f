"""The evaluation loop as a library function: resolve tasks and models, skip finished results, score the rest.

``evaluate(models, tasks, output_dir)`` is what ``searchr3-eval run`` calls; the CLI only parses and prints.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from searchr3_eval import __version__, distributed
from searchr3_eval.cache import EmbeddingCache, cache_file
from searchr3_eval.data import (MissingTaskData, RetrievalTask, TaskSource, check_data_dir, load_task_source, locate_task,
                                resolve_task_names)
from searchr3_eval.errors import UserError
from searchr3_eval.metrics import Run, drop_identical_ids, evaluate as score_run
from searchr3_eval.models import ModelOptions, ModelSpec, Retriever, describe, index_of, load_model, parse_model_specs
from searchr3_eval.report import write_report
from searchr3_eval.results import ModelIdentity, TaskResult, find_result, ranking_path, result_identity

log = logging.getLogger(__name__)

DEFAULT_OUTPUT = Path("results")
DEFAULT_TOP_K = 100
MIN_FREE_BYTES = 50 * 1024 * 1024
KEEP_LOADED_BYTES = 256 * 1024 * 1024  # tasks smaller than this are parsed once


def _silent(message: str) -> None:
    """Ranks other than 0 print nothing."""


@dataclass
class RunSummary:
    """What ``evaluate`` did: new results, results kept from earlier runs, tasks without data, report files."""

    computed: list[TaskResult] = field(default_factory=list)
    reused: list[TaskResult] = field(default_factory=list)
    missing_tasks: list[str] = field(default_factory=list)
    report_files: list[Path] = field(default_factory=list)


def check_writable(folder: Path, what: str, min_free_bytes: int = MIN_FREE_BYTES) -> None:
    """Fail before the long work when ``folder`` cannot be created, written or is (nearly) full."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise UserError(f"{what} {folder} is not writable ({exc.strerror or exc})") from exc
    free = shutil.disk_usage(folder).free
    if free < min_free_bytes:
        raise UserError(f"{what} {folder} has only {free / 2**20:.1f} MiB free (need {min_free_bytes / 2**20:.0f} MiB)")


def evaluate_pair(retriever: Retriever, identity: ModelIdentity, task: RetrievalTask, top_k: int = DEFAULT_TOP_K,
                  index: str = "flat") -> tuple[TaskResult, Run]:
    """Score one retriever on one task: the result (per-query scores and the run's facts) and the ranked run it
    scored. ``index`` is the canonical name of the dense retriever's index (it enters the result's identity)."""
    if retriever.settings != identity.settings:
        raise RuntimeError(f"{identity.spec}: loaded settings {retriever.settings} differ from {identity.settings}")
    start = time.perf_counter()
    run = retriever.search(task, top_k)
    scored = score_run(task.qrels, drop_identical_ids(run))
    return TaskResult(
        model=retriever.name, model_spec=identity.spec, revision=identity.revision, settings=identity.settings,
        task=task.name, split=task.split, default_split=task.default_split, task_fingerprint=task.fingerprint,
        top_k=top_k, scores=scored.scores, per_query=scored.per_query, num_documents=len(task.corpus),
        num_queries=len(task.queries), source=task.source,
        timing={"wall_seconds": time.perf_counter() - start, **retriever.search_stats},
        finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"), searchr3_eval_version=__version__,
        index=index,
    ), run


def evaluate(
    models: str | Sequence[str],
    tasks: str | Sequence[str],
    output_dir: Path = DEFAULT_OUTPUT,
    *,
    options: ModelOptions | None = None,
    data_dir: Path | None = None,
    split: str | None = None,
    top_k: int = DEFAULT_TOP_K,
    overwrite: bool = False,
    cache_dir: Path | None = None,
    download: bool = True,
    skip_missing: bool = False,
    report: bool = True,
    baseline: str | None = None,
    echo: Callable[[str], None] = print,
) -> RunSummary:
    """Score every model on every task and write one result file per (model identity, task) under ``output_dir``.

    Tasks are resolved and checked before any model loads; a result with the same identity that is readable is
    kept (``overwrite`` redoes it). BEIR sets whose data is missing offline are listed; the others still run, and a
    ``UserError`` names the missing ones at the end unless ``skip_missing``. ``cache_dir=None`` disables the
    embedding cache. ``baseline`` (a model spec or row label; default bm25) is what the report tests against.

    Launched with ``torchrun``, every rank encodes a share of each corpus and rank 0 searches, scores and writes
    (the other ranks return an empty summary).
    """
    options = options or ModelOptions()
    options.validate()
    distributed.init_from_env()
    main = distributed.is_main()
    if not main:
        echo = _silent
    if top_k < 1:
        raise UserError("--top-k must be at least 1")
    check_data_dir(data_dir)
    output_dir = Path(output_dir)
    names = resolve_task_names(tasks if isinstance(tasks, str) else ",".join(tasks), data_dir)
    named = parse_model_specs(models if isinstance(models, str) else ",".join(models))
    specs = list(dict.fromkeys(s for spec in named for s in [*spec.members, spec]))  # a fusion's members first
    ranked_members = {m for spec in specs for m in spec.members}  # their results must keep their rankings

    summary = RunSummary()
    sources: list[TaskSource] = []
    for name in names:
        try:
            sources.append(locate_task(name, data_dir, split, download))
        except MissingTaskData as exc:
            summary.missing_tasks.append(name)
            echo(f"missing {name}: {exc}")
    identities = {spec: describe(spec, options) for spec in specs}
    indexes = {spec: index_of(spec, options) for spec in specs}
    check_writable(output_dir, "output folder")
    if cache_dir is not None and any(spec.is_dense for spec in specs):
        check_writable(Path(cache_dir), "cache folder")

    todo: dict[TaskSource, list[tuple[ModelSpec, dict]]] = {}
    for source in sources:
        for spec in specs:
            identity = result_identity(identities[spec], source.name, source.split, source.fingerprint, top_k,
                                       indexes[spec])
            path, previous = find_result(output_dir, identity)
            if overwrite or (spec in ranked_members and not ranking_path(path).is_file()):
                previous = None
            if previous is None:
                todo.setdefault(source, []).append((spec, identity))
            else:
                echo(f"skip {spec.label} on {source.name}: result exists ({path}; use --overwrite to redo)")
                summary.reused.append(previous)
    kept: dict[TaskSource, RetrievalTask] = {}
    for source in todo:  # parse every task that has work before any model runs; small ones stay loaded
        task = load_task_source(source)
        if source.size < KEEP_LOADED_BYTES:
            kept[source] = task

    cache: EmbeddingCache | None = None
    loaded: dict[ModelSpec, Retriever] = {}
    for source, pairs in todo.items():
        task = kept.pop(source, None) or load_task_source(source)
        for spec, identity in pairs:
            if not main and not spec.is_dense:
                continue  # only the dense encoders' work is shared across ranks
            if spec not in loaded:
                if spec.is_dense and main and cache_dir is not None and cache is None:  # rank 0 reads and writes it
                    cache = EmbeddingCache(cache_file(cache_dir))
                loaded[spec] = load_model(spec, options, cache if spec.is_dense else None, output_dir)
            if not main:
                loaded[spec].search(task, top_k)  # encodes this rank's share; rank 0 scores
                continue
            result, run = evaluate_pair(loaded[spec], identities[spec], task, top_k, indexes[spec])
            path = result.save(output_dir, run)
            summary.computed.append(result)
            echo(f"{result.model} on {source.name}: nDCG@10 {result.scores['ndcg_at_10']:.4f} -> {path}")
    distributed.barrier()
    if report and main and (summary.computed or summary.reused):
        summary.report_files = write_report(output_dir, baseline)
    if summary.missing_tasks and not skip_missing:
        raise UserError(f"no data for {len(summary.missing_tasks)} task(s): {', '.join(summary.missing_tasks)}; "
                        "the others were scored (put the BEIR folders under --data-dir, or pass --skip-missing)")
    return summary
